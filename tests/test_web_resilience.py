"""The web app when things fail, in a real browser: the model's worker gone, the web process killed mid-reply, an
Arena side that fails. Echo workers (these are about what is stored and shown, not about inference)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from parley.store.conversations import FAILED, INCOMPLETE
from tests.browser import browser, stored_messages, wait_until  # noqa: F401 - the browser fixture
from tests.servers import Server, models_at, start_controller, start_worker

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed")
MESSAGE = "textarea[aria-label=Message]"
REPLIES = "article.message.assistant"


def start_web(controller: Server, db_url: str, port: int | None = None) -> Server:
    web = Server("web", "--db-url", db_url, "--controller-address", controller.url, port=port)
    return web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web UI")


def open_app(browser, web: Server):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    page.goto(web.url + "/")  # redirected to /app/
    return page


def pick_model(page, name: str) -> None:
    page.wait_for_selector(f"select[aria-label=Model] option[value='{name}']", state="attached")
    page.select_option("select[aria-label=Model]", name)


def send(page, text: str) -> None:
    page.fill(MESSAGE, text)
    page.press(MESSAGE, "Enter")


def replies(page) -> list[str]:
    return [t.strip() for t in page.locator(f"{REPLIES} .markdown").all_inner_texts()]


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
        page = open_app(browser, web)
        pick_model(page, "echo-model")
        send(page, "First question")
        wait_until(lambda: [m.finish_reason for m in stored_messages(db_url)] == [None, "stop"], "no first reply")
        worker.kill()  # the model's only worker is gone, unannounced

        send(page, "Second question")
        page.wait_for_selector(f"{REPLIES} .reply-error")
        assert "Second question" in page.inner_text("section.thread")  # the user's message stays
        rows = stored_messages(db_url)
        assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
        assert rows[3].finish_reason == FAILED and rows[3].error
        assert rows[3].error in page.inner_text(f"{REPLIES} .reply-error")

        worker = start_worker(controller, names="echo-model", echo=True)  # a replacement registers
        send(page, "Third question")
        wait_until(lambda: len(rows := stored_messages(db_url)) == 6 and rows[-1].finish_reason == "stop",
                   "the third reply was not stored")
        wait_until(lambda: page.is_visible("button.send"), "the reply never ended")
        page.click(f"{REPLIES} >> nth=-1 >> button:has-text('Regenerate')")  # a new version; the earlier one kept
        wait_until(lambda: len(rows := stored_messages(db_url)) == 7 and rows[-1].finish_reason == "stop",
                   "the regenerated reply was not stored")

        page.reload()  # reopened: the failure is shown where it happened
        page.wait_for_selector(f"{REPLIES} .version-count:has-text('2/2')")
        assert page.locator(f"{REPLIES}").count() == 3
        assert page.locator(f"{REPLIES} >> nth=1 >> .reply-error").count() == 1
        assert page.locator(f"{REPLIES} .reply-error").count() == 1
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
        page = open_app(browser, web)
        pick_model(page, "echo-model")
        send(page, "Please repeat all of this slowly, word by word, so that it takes a while to finish")
        # kill when the stored reply has text (it is written as it streams, not only at the end)
        wait_until(lambda: len(rows := stored_messages(db_url)) == 2 and len(rows[1].content.split()) >= 3,
                   "the streaming reply was never stored", timeout=60)
        web.kill()
        [_, partial] = stored_messages(db_url)
        assert partial.finish_reason == INCOMPLETE and partial.content
        page.context.close()

        web = start_web(controller, db_url, port=port)
        page = open_app(browser, web)
        page.click("nav.history a:has-text('Please repeat')")  # reopened from the history
        wait_until(lambda: page.locator(f"{REPLIES} .reply-mark:has-text('Interrupted')").count() == 1,
                   lambda: f"not marked: {page.url} {page.inner_text('body')}")
        assert " ".join(partial.content.split()[:3]) in replies(page)[0]
        pick_model(page, "echo-model")
        send(page, "Done?")
        wait_until(lambda: len(stored_messages(db_url)) == 4 and stored_messages(db_url)[-1].finish_reason == "stop",
                   "the next reply did not complete", timeout=90)
        rows = stored_messages(db_url)
        assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
        assert len({m.conversation_id for m in rows}) == 1
    finally:
        web.stop()
        worker.stop()


def test_an_arena_side_that_failed_cannot_be_voted_on_and_the_page_says_why(controller, browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    good = start_worker(controller, names="echo-a", echo=True)
    bad = start_worker(controller, names="echo-b", echo=True)
    web = start_web(controller, db_url)
    try:
        assert set(models_at(controller)) == {"echo-a", "echo-b"}
        page = open_app(browser, web)
        pick_model(page, "echo-a")
        page.click("nav.pages a:has-text('Arena')")
        page.click("button:has-text('Side by side')")
        page.select_option("select[aria-label='Model A']", "echo-a")
        page.select_option("select[aria-label='Model B']", "echo-b")
        bad.kill()
        page.fill("textarea[aria-label='Message to every model']", "Name a color.")
        page.press("textarea[aria-label='Message to every model']", "Enter")
        page.wait_for_selector(".votes [role=status]:has-text('model B failed to answer')")
        assert not page.is_enabled(".votes button:has-text('A is better')")
        assert page.locator(".side[data-side=B] .reply-error").count() == 1
        assert page.locator(".side[data-side=A] .reply-error").count() == 0
        rows = stored_messages(db_url)
        assert sorted(m.finish_reason for m in rows if m.role == "assistant") == [FAILED, "stop"]
    finally:
        web.stop()
        good.stop()
        bad.stop()


def test_new_chat_starts_a_new_conversation_and_the_old_one_stays_in_the_history(controller, browser, tmp_path):
    """Gradio's trash icon used to clear the screen only: the next reply continued the hidden conversation."""
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    worker = start_worker(controller, names="echo-model", echo=True)
    web = start_web(controller, db_url)
    try:
        page = open_app(browser, web)
        pick_model(page, "echo-model")
        send(page, "The secret word is banana")
        wait_until(lambda: [m.finish_reason for m in stored_messages(db_url)] == [None, "stop"], "no first reply")
        page.click("button:has-text('+ New chat')")
        wait_until(lambda: not replies(page), "the screen was not cleared")
        time.sleep(0.2)
        send(page, "What is the secret word?")
        wait_until(lambda: len(rows := stored_messages(db_url)) == 4 and rows[-1].finish_reason is not None,
                   "no second reply", timeout=60)
        by_conversation: dict[str, list[str]] = {}
        for m in stored_messages(db_url):
            by_conversation.setdefault(m.conversation_id, []).append(m.content)
        assert len(by_conversation) == 2 and all(len(c) == 2 for c in by_conversation.values())
        page.wait_for_selector("nav.history a:has-text('The secret word is banana')")
    finally:
        web.stop()
        worker.stop()
