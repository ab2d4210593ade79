"""`parley chat`: memory across turns, commands, save/load, Ctrl-C, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from anyio.from_thread import start_blocking_portal

from parley.chat.app import ChatApp
from parley.chat.backends import ChatParams, LocalBackend
from parley.chat.session import ChatSession
from parley.chat.styles import ProgrammaticStyle
from parley.errors import ParleyError
from tests.conftest import REPO, run_parley

# The bundled 135M model recalls this fact greedily when it is in the history, and not otherwise.
FACT, QUESTION = "The secret word is banana.", "What is the secret word?"


def test_programmatic_chat_remembers_the_first_turn():
    result = run_parley("chat", "--style", "programmatic", "--temperature", "0", stdin=f"{FACT}\n{QUESTION}\n")
    assert result.returncode == 0, result.stderr
    replies = [r for r in result.stdout.split("\n") if r.strip()]
    assert len(replies) >= 2
    assert "banana" in replies[-1].lower()


def test_no_history_forgets_the_first_turn():
    result = run_parley("chat", "--style", "programmatic", "--temperature", "0", "--no-history",
                        stdin=f"{FACT}\n{QUESTION}\n")
    assert result.returncode == 0, result.stderr
    replies = [r for r in result.stdout.split("\n") if r.strip()]
    assert len(replies) >= 2
    assert "banana" not in replies[-1].lower()


def test_save_then_load_in_a_new_process_restores_the_conversation(tmp_path):
    saved = tmp_path / "chat.json"
    first = run_parley("chat", "--style", "programmatic", "--temperature", "0", stdin=f"{FACT}\n!!save {saved}\n")
    assert first.returncode == 0, first.stderr
    data = json.loads(saved.read_text())
    assert data["format"] == "parley.chat.v1" and data["model"] == "smollm2-135m-instruct"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == FACT

    second = run_parley("chat", "--style", "programmatic", "--temperature", "0", stdin=f"!!load {saved}\n{QUESTION}\n")
    assert second.returncode == 0, second.stderr
    assert "banana" in second.stdout.lower()
    assert "loaded 1 exchanges" in second.stderr


def chat_in_process(engine, formatter, lines: list[str], **params) -> tuple[ChatSession, str, str]:
    stdin, stdout = io.StringIO("".join(line + "\n" for line in lines)), io.StringIO()
    style = ProgrammaticStyle(stdin=stdin, stdout=stdout)
    errors = io.StringIO()
    style.error = lambda text: errors.write(text + "\n")  # type: ignore[method-assign]
    session = ChatSession()
    with start_blocking_portal() as portal:
        ChatApp(LocalBackend(engine), style, session,
                ChatParams(temperature=0, max_new_tokens=40, **params), portal).run()
    return session, stdout.getvalue(), errors.getvalue()


def test_regen_remove_reset_and_exit(engine, formatter):
    session, out, _ = chat_in_process(engine, formatter, [FACT, "!!regen"])
    replies = [r for r in out.split("\n") if r.strip()]
    assert len(session.turns) == 2  # regenerating replaced the exchange
    assert replies[0] == replies[1]  # greedy: the same reply again

    session, _, _ = chat_in_process(engine, formatter, [FACT, "Hello!", "!!remove"])
    assert [t.content for t in session.turns if t.role == "user"] == [FACT]

    session, _, _ = chat_in_process(engine, formatter, [FACT, "clear", "", "   ", "exit", "never sent"])
    assert session.turns == []


def test_unknown_command_and_bad_load_keep_the_conversation(engine, formatter, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    session, _, errors = chat_in_process(engine, formatter, [FACT, "!!frobnicate", f"!!load {bad}",
                                                             f"!!load {tmp_path / 'missing.json'}", "!!save"])
    assert len(session.turns) == 2
    assert "unknown command !!frobnicate" in errors
    assert "not a saved parley chat" in errors and "no such file" in errors and "usage: !!save FILE" in errors


def test_a_prompt_over_the_context_window_is_an_error_not_a_crash(engine, formatter):
    huge = "word " * (engine.model_info.context_length + 100)
    session, out, errors = chat_in_process(engine, formatter, [huge, FACT])
    assert "context window" in errors
    assert [t.content for t in session.turns if t.role == "user"] == [FACT]  # the chat went on


def test_ctrl_c_stops_the_reply_not_the_program():
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley", "chat", "--temperature", "0", "--max-new-tokens", "2000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    try:
        proc.stdin.write("Tell me a very long story about a dragon.\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while "smollm2-135m-instruct: " not in "".join(seen) or len("".join(seen).split("instruct: ", 1)[-1]) < 20:
            assert time.monotonic() < deadline, "no reply started streaming"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        proc.stdin.write(f"{FACT}\n!!exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    reader.join(timeout=5)
    out = "".join(seen)
    assert "(stopped" in out
    assert out.count("smollm2-135m-instruct: ") == 2  # it answered the next message


def test_remote_backend_needs_a_model_name():
    result = run_parley("chat", "--base-url", "http://127.0.0.1:9/v1", stdin="hi\n", timeout=60)
    assert result.returncode == 2 and "--base-url needs --model" in result.stderr


def test_remote_server_that_is_down_is_a_clear_error_and_the_chat_goes_on():
    result = run_parley("chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--style", "programmatic",
                        stdin="hi\nagain\n", timeout=120)
    assert result.returncode == 0
    assert result.stderr.count("error: cannot reach http://127.0.0.1:9/v1/; is the server running?") == 2


def test_session_refuses_an_unbalanced_saved_file(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"format": "parley.chat.v1", "messages": [{"role": "user", "content": "hi"}]}))
    session = ChatSession()
    with pytest.raises(ParleyError, match="last message must be the assistant"):
        session.load(path)
