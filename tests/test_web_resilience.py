"""The web UI when things fail, in a real browser (Playwright, Debian's headless Chromium): a reply whose
worker is gone, a web process killed mid-reply, an arena side that fails. Whatever happens, the conversation can
be continued and regenerated, what is shown is what is stored, and a failed side cannot be voted on.

The models here are echo workers (the layers above the engine are what is tested; inference is tested elsewhere)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from parley.store.conversations import FAILED, INCOMPLETE
from tests.servers import Server, models_at, start_controller, start_worker
from tests.test_web_ui import (  # noqa: F401
    assistant_texts,
    browser,
    open_page,
    stored_messages,
    wait_text,
    wait_until,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed")


def start_web(controller: Server, db_url: str, port: int | None = None) -> Server:
    web = Server("web", "--db-url", db_url, "--controller-address", controller.url, port=port)
    return web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web UI")


def pick_model(page, name: str) -> None:
    wait_until(lambda: page.input_value("#chat-model input") != "", "no model was listed")
    page.click("#chat-model input")
    page.get_by_role("option", name=name).click()


def send(page, text: str) -> None:
    page.fill("#chat-input textarea", text)
    page.click("#chat-send")


def last_reply_is(page, predicate, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        replies = assistant_texts(page, "#chatbot")
        if replies and predicate(replies[-1]):
            return replies[-1]
        assert time.monotonic() < deadline, f"replies shown: {replies}"
        time.sleep(0.1)


@pytest.fixture
def controller():
    c = start_controller("--heart-beat-expiration", "30")
    yield c
    c.stop()


def test_a_reply_with_no_worker_fails_then_the_same_conversation_goes_on_and_regenerates(controller, browser,
                                                                                          tmp_path):
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    worker = start_worker(controller, names="echo-model", echo=True)
    web = start_web(controller, db_url)
    try:
        page = open_page(browser, web.url + "/")
        pick_model(page, "echo-model")
        send(page, "First question")
        wait_until(lambda: [m.finish_reason for m in stored_messages(db_url)] == [None, "stop"], "no first reply")
        worker.kill()  # the model's only worker is gone, unannounced

        send(page, "Second question")
        failed = last_reply_is(page, lambda t: "⚠" in t)
        assert "Second question" in page.inner_text("#chatbot")  # the user's message stays
        rows = stored_messages(db_url)
        assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
        assert rows[3].finish_reason == FAILED and rows[3].error and rows[3].error in failed

        worker = start_worker(controller, names="echo-model", echo=True)  # a replacement registers
        send(page, "Third question")
        wait_until(lambda: len(rows := stored_messages(db_url)) == 6 and rows[-1].finish_reason == "stop",
                   "the third reply was not stored")
        third = last_reply_is(page, lambda t: t == " ".join(stored_messages(db_url)[-1].content.split()))
        assert "alternate" not in third and "⚠" not in third
        page.click("#chat-regenerate")  # a new version of the third reply; the earlier one is kept
        wait_until(lambda: len(rows := stored_messages(db_url)) == 7 and rows[-1].finish_reason == "stop",
                   "the regenerated reply was not stored")
        rows = stored_messages(db_url)
        assert [m.role for m in rows] == ["user", "assistant"] * 3 + ["assistant"]
        assert rows[-1].parent_id == rows[-2].parent_id == rows[-3].id

        page.reload()  # reopened from the history: the failure is shown where it happened
        wait_text(page, "#history", lambda t: "First question" in t)
        page.locator("#history label", has_text="First question").click()
        wait_text(page, "#chatbot", lambda t: "Third question" in t)
        shown = assistant_texts(page, "#chatbot")
        assert len(shown) == 3 and "⚠" in shown[1] and "⚠" not in shown[0] + shown[2]
    finally:
        web.stop()
        worker.stop()


def test_the_web_process_killed_mid_reply_keeps_the_partial_reply_marked_and_the_conversation_goes_on(
        controller, browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    worker = start_worker(controller, names="echo-model", echo=True, delay_s=0.25)
    web = start_web(controller, db_url)
    port = web.port
    try:
        page = open_page(browser, web.url + "/")
        pick_model(page, "echo-model")
        send(page, "Please repeat all of this slowly, word by word, so that it takes a while to finish")
        # kill when the stored reply has text (it is written as it streams, not only at the end)
        wait_until(lambda: len(rows := stored_messages(db_url)) == 2 and len(rows[1].content.split()) >= 3,
                   "the streaming reply was never stored", timeout=60)
        web.kill()
        [_, partial] = stored_messages(db_url)
        assert partial.finish_reason == INCOMPLETE and partial.content
        page.close()

        web = start_web(controller, db_url, port=port)
        page = open_page(browser, web.url + "/")
        wait_text(page, "#history", lambda t: "Please repeat" in t)
        page.locator("#history label", has_text="Please repeat").click()
        shown = wait_text(page, "#chatbot", lambda t: "incomplete" in t)
        assert " ".join(partial.content.split()[:3]) in shown
        send(page, "Done?")
        wait_until(lambda: len(stored_messages(db_url)) == 4 and stored_messages(db_url)[-1].finish_reason == "stop",
                   "the next reply did not complete", timeout=90)
        rows = stored_messages(db_url)
        assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
        assert len({m.conversation_id for m in rows}) == 1
    finally:
        web.stop()
        worker.stop()


def test_an_arena_side_that_failed_cannot_be_voted_on_and_the_buttons_say_why(controller, browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    good = start_worker(controller, names="echo-a", echo=True)
    bad = start_worker(controller, names="echo-b", echo=True)
    web = start_web(controller, db_url)
    try:
        assert set(models_at(controller)) == {"echo-a", "echo-b"}
        page = open_page(browser, web.url + "/")
        page.get_by_role("tab", name="Arena (side-by-side)").click()
        for box, name in (("#side-model-a", "echo-a"), ("#side-model-b", "echo-b")):  # the first two listed
            wait_until(lambda: page.input_value(f"{box} input") == name, f"{box} is not {name}")
        bad.kill()
        page.fill("#side-input textarea", "Name a color.")
        page.click("#side-send")
        vote = page.locator("#side-vote-model_a")
        wait_until(lambda: "no vote" in vote.inner_text(), "the vote buttons never said why", timeout=60)
        assert not vote.is_enabled() and "model B failed" in vote.inner_text()
        assert "⚠" in assistant_texts(page, "#side-b")[-1]
        assert assistant_texts(page, "#side-a")[-1] and "⚠" not in assistant_texts(page, "#side-a")[-1]
        rows = stored_messages(db_url)
        assert sorted(m.finish_reason for m in rows if m.role == "assistant") == [FAILED, "stop"]
        page.screenshot(path=str(tmp_path / "arena-failed.png"))
    finally:
        web.stop()
        good.stop()
        bad.stop()


def test_the_chatbots_own_clear_icon_starts_a_new_chat_instead_of_hiding_the_stored_one(controller, browser,
                                                                                        tmp_path):
    """Gradio's trash icon used to clear the screen only: the next reply continued the hidden conversation."""
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    worker = start_worker(controller, names="echo-model", echo=True)
    web = start_web(controller, db_url)
    try:
        page = open_page(browser, web.url + "/")
        pick_model(page, "echo-model")
        send(page, "The secret word is banana")
        wait_until(lambda: [m.finish_reason for m in stored_messages(db_url)] == [None, "stop"], "no first reply")
        page.locator("#chatbot button[aria-label='Clear']").click()
        wait_until(lambda: not assistant_texts(page, "#chatbot"), "the screen was not cleared")
        send(page, "What is the secret word?")
        wait_until(lambda: len(rows := stored_messages(db_url)) == 4 and rows[-1].finish_reason is not None
                   and rows[0].finish_reason is None, "no second reply", timeout=60)
        rows = stored_messages(db_url)
        by_conversation = {}
        for m in rows:
            by_conversation.setdefault(m.conversation_id, []).append(m.content)
        assert len(by_conversation) == 2  # a new conversation, not a continuation of the hidden one
        assert all(len(contents) == 2 for contents in by_conversation.values())
    finally:
        web.stop()
        worker.stop()
