"""The web UI in a real browser: Playwright driving Debian's headless Chromium against `parley serve` on
127.0.0.1 with the bundled model (the default transformers engine) plus an echo worker, so that a battle has two models.
Screenshots of each screen go to test-artifacts/screens/."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from parley.store.database import Database
from parley.store.models import Message, Vote
from tests.browser import (  # noqa: F401 - fixtures and helpers the other browser tests import from here too
    CHROMIUM,
    CLUSTER_SECRET,
    MODEL,
    SHOTS,
    Stack,
    browser,
    open_page,
    stored_messages,
    wait_until,
)
from tests.servers import REPO, Server

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("web"))
    yield s
    s.stop()


def wait_text(page, selector: str, predicate, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = page.inner_text(selector)
        if predicate(text):
            return text
        assert time.monotonic() < deadline, f"{selector}: {text!r}"
        time.sleep(0.05)


def wait_value(page, selector: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not (value := page.input_value(selector)):
        assert time.monotonic() < deadline, f"{selector} stayed empty"
        time.sleep(0.1)
    return value


def set_slider(page, slider: str, value: str, timeout: float = 60) -> None:
    """Type a slider's value into its number box until the slider's own state (its range input) holds it."""
    deadline = time.monotonic() + timeout
    while page.input_value(f"{slider} input[type=range]") != value:
        assert time.monotonic() < deadline, f"{slider} never took {value}"
        page.locator(f"{slider} input[type=number]").fill(value)
        page.locator(f"{slider} input[type=number]").press("Tab")
        page.wait_for_timeout(500)


def assistant_texts(page, selector: str) -> list[str]:
    """The replies shown (not the "Loading content" placeholder of one still pending)."""
    return [t.strip() for t in page.locator(f"{selector} .bot-row").all_inner_texts()]


def send_and_watch(page, text: str, replies_before: int) -> list[int]:
    """Send a chat message; return the lengths of the reply seen while it streamed."""
    page.fill("#chat-input textarea", text)
    page.click("#chat-send")
    seen: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replies = assistant_texts(page, "#chatbot")
        if len(replies) > replies_before:
            seen.append(len(replies[-1]))
            if len(seen) > 40 and seen[-1] == seen[-41] and seen[-1] > 0:
                break  # no growth for two seconds: finished
        time.sleep(0.05)
    return seen


def test_chat_two_turns_streamed_then_reload_and_continue_from_history(stack, browser):
    page = open_page(browser, stack.url)
    page.wait_for_selector("#chat-input textarea")
    wait_value(page, "#chat-model input")
    page.click("#chat-model input")
    page.get_by_role("option", name=MODEL).click()
    page.click("#chat-parameters")  # greedy, short replies
    for slider, value in (("#temperature", "0"), ("#max-tokens", "48")):
        set_slider(page, slider, value)

    seen = send_and_watch(page, "What is the capital of France?", 0)
    assert len({n for n in seen if n > 0}) >= 2, f"the reply did not stream: lengths seen {seen}"
    first = assistant_texts(page, "#chatbot")[-1]
    rows = stored_messages(stack.db_url)
    assert rows[1].model == MODEL and rows[1].parameters == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 48}
    assert "Paris" in first  # greedy decoding of the real model
    send_and_watch(page, "And of Italy?", 1)
    assert len(assistant_texts(page, "#chatbot")) == 2
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "chat.png"))
    rows = stored_messages(stack.db_url)
    assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[3].parameters == rows[1].parameters
    assert 0 < rows[1].completion_tokens <= 48
    assert " ".join(rows[1].content.split()) == " ".join(first.split())  # what was shown is what was stored

    page.reload()
    page.wait_for_selector("#chat-input textarea")
    wait_text(page, "#history", lambda t: "What is the capital of France?" in t)
    page.locator("#history label", has_text="What is the capital of France?").click()
    wait_text(page, "#chatbot", lambda t: "And of Italy?" in t)
    send_and_watch(page, "Thank you!", 2)
    page.screenshot(path=str(SHOTS / "history.png"))
    rows = stored_messages(stack.db_url)
    assert len(rows) == 6 and len({m.conversation_id for m in rows}) == 1  # the same conversation, continued
    page.close()


def test_arena_battle_vote_reveals_names_and_is_stored_then_leaderboard(stack, browser):
    page = open_page(browser, stack.url)
    page.wait_for_selector("#chat-input textarea")
    page.get_by_role("tab", name="Arena (battle)").click()
    page.fill("#battle-input textarea", "Name a color.")
    page.click("#battle-send")
    vote = page.locator("#battle-vote-model_a")
    deadline = time.monotonic() + 180
    while not vote.is_enabled():
        assert time.monotonic() < deadline, "the vote buttons never became active"
        time.sleep(0.2)
    assert assistant_texts(page, "#battle-a")[-1] and assistant_texts(page, "#battle-b")[-1]
    assert MODEL not in page.inner_text("#battle-names") and "echo-model" not in page.inner_text("#battle-names")
    page.screenshot(path=str(SHOTS / "arena.png"))
    vote.click()
    names = wait_text(page, "#battle-names", lambda t: MODEL in t and "echo-model" in t)
    assert "Model A" in names
    page.screenshot(path=str(SHOTS / "arena-voted.png"))
    db = Database(stack.db_url)
    with db.session() as s:
        [row] = s.query(Vote).all()
        assert row.kind == "model_a" and {row.model_a, row.model_b} == {MODEL, "echo-model"} and row.anony
    db.close()

    page.get_by_role("tab", name="Leaderboard").click()
    assert "No Arena ratings yet" in wait_text(page, "#leaderboard-status", lambda t: t.strip())
    page.click("#leaderboard-recompute")
    wait_text(page, "#leaderboard-status", lambda t: "Recomputed from 1 battles" in t)
    board = wait_text(page, "#leaderboard", lambda t: MODEL in t and "echo-model" in t)
    assert board.count("needs more votes") == 2  # one vote cannot pin a rating down: said, not a made-up number
    assert (stack.data_home / "arena_ratings" / "leaderboard.json").is_file()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "leaderboard.png"))
    page.close()


def test_with_auth_a_second_user_cannot_see_the_first_users_conversations(stack, browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'auth.db'}"
    for user in ("alice", "bob"):
        created = subprocess.run([sys.executable, "-m", "parley", "db", "create-user", user, "--password-stdin",
                                  "--db-url", db_url], input=f"{user}-secret-pw\n", capture_output=True, text=True,
                                 cwd=REPO, timeout=120)
        assert created.returncode == 0, created.stderr
    web = Server("web", "--auth", "--db-url", db_url, "--controller-address", stack.controller.url, secret=CLUSTER_SECRET)
    web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web UI")
    try:
        page = open_page(browser, web.url + "/")
        page.wait_for_selector("input[type=password]")
        page.screenshot(path=str(SHOTS / "login.png"))
        page.locator("input").first.fill("alice")
        page.locator("input[type=password]").fill("wrong password")
        page.get_by_role("button", name="Login").click()
        page.wait_for_timeout(1500)
        assert page.locator("#chat-input").count() == 0  # still the login form
        page.locator("input").first.fill("alice")
        page.locator("input[type=password]").fill("alice-secret-pw")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#chat-input textarea")
        wait_text(page, "#signed-in", lambda t: "alice" in t)
        wait_value(page, "#chat-model input")
        page.click("#chat-model input")
        page.get_by_role("option", name="echo-model").click()
        send_and_watch(page, "alice's private plans", 0)
        wait_text(page, "#history", lambda t: "alice's private plans" in t)
        page.context.clear_cookies()

        page = open_page(browser, web.url + "/")
        page.wait_for_selector("input[type=password]")
        page.locator("input").first.fill("bob")
        page.locator("input[type=password]").fill("bob-secret-pw")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#chat-input textarea")
        wait_text(page, "#signed-in", lambda t: "bob" in t)
        page.wait_for_timeout(1500)
        assert page.locator("#history label").count() == 0  # bob's history is empty
        page.fill("#history-search textarea", "private")
        page.wait_for_timeout(1500)
        assert page.locator("#history label").count() == 0 and "alice" not in page.inner_text("#history")
        page.screenshot(path=str(SHOTS / "second-user.png"))
        page.close()
    finally:
        web.stop()
    db = Database(db_url)
    with db.session() as s:
        assert [json.loads(json.dumps(m.content)) for m in s.query(Message).filter(Message.role == "user")] == [
            "alice's private plans"]
    db.close()


def test_two_users_sending_at_the_same_moment_are_answered_at_the_same_time(stack, browser):
    """Two people (two browser contexts) send at once: the second one's first token comes before the first one's
    reply ends (replies are not served one at a time), and both replies are stored."""
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(stack.url)
        page.wait_for_selector("#chat-input textarea")
        wait_value(page, "#chat-model input")
        page.click("#chat-model input")
        page.get_by_role("option", name=MODEL).click()
        page.click("#chat-parameters")
        for slider, value in (("#temperature", "0"), ("#max-tokens", "160")):
            set_slider(page, slider, value)
        pages.append(page)
    before = {m.id for m in stored_messages(stack.db_url)}
    prompts = ["Write a long story about a dragon who loves bread.", "Write a long story about a robot at sea."]
    for page, prompt in zip(pages, prompts):
        page.fill("#chat-input textarea", prompt)
    sent = time.monotonic()
    for page in pages:
        page.click("#chat-send")
    first_token: list[float | None] = [None, None]
    lengths: list[list[tuple[float, int]]] = [[], []]
    deadline = sent + 240
    while time.monotonic() < deadline:
        for i, page in enumerate(pages):
            replies = assistant_texts(page, "#chatbot")
            n = len(replies[-1]) if replies else 0
            now = time.monotonic() - sent
            if n and first_token[i] is None:
                first_token[i] = now
            if n and (not lengths[i] or lengths[i][-1][1] != n):
                lengths[i].append((now, n))
        rows = [m for m in stored_messages(stack.db_url) if m.id not in before]
        if len(rows) == 4 and all(m.finish_reason not in (None, "incomplete") for m in rows if m.role == "assistant"):
            break
        time.sleep(0.05)
    rows = [m for m in stored_messages(stack.db_url) if m.id not in before]
    assert sorted(m.content for m in rows if m.role == "user") == sorted(prompts)
    replies = [m for m in rows if m.role == "assistant"]
    assert len(replies) == 2 and all(m.finish_reason in ("stop", "length") and m.content for m in replies)
    ends = [lengths[i][-1][0] for i in (0, 1)]  # when each reply last grew on screen
    assert None not in first_token
    second = 0 if first_token[0] > first_token[1] else 1
    print(f"first tokens at {first_token[0]:.2f} s and {first_token[1]:.2f} s; replies ended at {ends[0]:.2f} s "
          f"and {ends[1]:.2f} s")
    assert first_token[second] < ends[1 - second], (first_token, ends)
    for page in pages:
        page.context.close()
