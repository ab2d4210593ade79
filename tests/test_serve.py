"""`parley serve`: the embedded default stack comes up, answers through the SDK, and stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys

import openai

from tests.servers import REPO, free_port


def test_serve_answers_through_the_sdk_and_stops_on_sigterm(tmp_path):
    api_port, controller_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "parley", "serve", "--port", str(api_port),
                                 "--controller-port", str(controller_port), "--worker-port", str(free_port())],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="none", max_retries=0)
        for _ in range(600):
            if "Press Ctrl-C to stop" in log.read_text() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.5"])
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert f"http://127.0.0.1:{api_port}/v1" in text
        [model] = [m.id for m in client.models.list()]
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=24,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    for server in ("API stopped", "worker stopped", "controller stopped", "stopped"):
        assert server in text


def test_serve_refuses_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "parley", "serve", "--port", str(port)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"port {port} (api) is in use" in result.stderr
