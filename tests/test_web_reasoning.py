"""A reasoning model's thinking in the web app: kept apart from its answer, streamed live, stored and returned by the
JSON API, never sent back to the model, and shown folded above the answer in a real browser (Playwright driving
Debian's Chromium).

The models are echo workers run with `--reasoning-parser think`, so their replies go through the same parser as a
real reasoning model's (the engines' own tests read real model output through it). The echo engine repeats its
prompt: `echo-thinker` (the default one-shot template, which stops at its first `###`) repeats the system prompt, so a
system prompt of `<think>R</think>A` comes back as a reply that reasoned R and answered A; `echo-raw-thinker`
(`--conv-template raw`: the messages' text, one after another) repeats the whole conversation, which shows what the
model was given."""

from __future__ import annotations

import httpx
import pytest

from tests.browser import CHROMIUM, SHOTS, browser, wait_until  # noqa: F401 - the browser fixture
from tests.servers import start_controller, start_worker
from tests.test_web_api import Client, start_web
from tests.test_web_app import (
    AXE,
    axe_violations,
    open_app,
    pick,
    replies,
    send,
    wait_done,
)

SECRET = "web-reasoning-test-cluster-secret-01"
THINKER, RAW = "echo-thinker", "echo-raw-thinker"
REASONING = ("The user asks why the sea is salty. Rivers wash minerals out of rocks and carry them to the sea; the "
             "water evaporates and the salt stays. I will answer in one sentence.")
ANSWER = "The sea is salty because rivers carry **dissolved minerals** into it, and evaporation leaves them behind."
THINKING = f"<think>{REASONING}</think>{ANSWER}"


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    controller = start_controller(secret=SECRET)
    workers = [start_worker(controller, "--reasoning-parser", "think", *extra, names=name, echo=True, delay_s=0.03,
                            wait=False)
               for name, extra in ((THINKER, ()), (RAW, ("--conv-template", "raw")))]
    for worker, name in zip(workers, (THINKER, RAW)):
        worker.wait_until(lambda name=name, worker=worker: name in httpx.post(
            controller.url + "/list_models", headers=controller.headers, timeout=2).json()["models"]
            and httpx.get(worker.url + "/health", timeout=1).json()["registered"], f"registration of {name}")
    db_url = f"sqlite:///{tmp_path_factory.mktemp('web-reasoning') / 'parley.db'}"
    server = start_web(controller, db_url)
    yield server
    for s in (server, *workers, controller):
        s.stop()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_the_app_shows_the_reasoning_folded_above_the_answer(web, browser):
    """First in the module: the screenshot's history holds this conversation alone."""
    page = open_app(browser, web.url)
    pick(page, THINKER, max_tokens="400")
    page.fill("section.settings textarea", THINKING)
    page.click("button.settings-toggle")  # the settings close
    send(page, "Why is the sea salty?")
    page.wait_for_selector("details.reasoning summary:text-is('Thinking…')")  # while it thinks
    assert wait_done(page, 1) == ANSWER.replace("**", "")
    details, summary = page.locator("details.reasoning"), page.locator("details.reasoning summary")
    assert summary.inner_text() == "Reasoning" and details.get_attribute("open") is None
    assert not page.is_visible(".reasoning-text")
    assert details.bounding_box()["y"] < page.locator("article.message.assistant .markdown").bounding_box()["y"]

    summary.click()
    page.wait_for_selector(".reasoning-text:visible")
    assert page.inner_text(".reasoning-text").strip() == REASONING
    assert replies(page) == [ANSWER.replace("**", "")]  # the answer is the answer alone
    if AXE.exists():
        for theme in ("light", "dark"):
            page.select_option("select[aria-label=Theme]", theme)
            assert axe_violations(page) == [], theme
        page.select_option("select[aria-label=Theme]", "light")
    page.screenshot(path=str(SHOTS / "app-reasoning.png"))  # the README's docs/app-reasoning.png, copied by hand
    summary.focus()
    page.keyboard.press("Enter")  # folded again from the keyboard
    wait_until(lambda: details.get_attribute("open") is None, "Enter on the summary did not fold the reasoning")

    page.reload()  # from the store: folded again, the answer apart
    page.wait_for_selector("details.reasoning:not([open]) summary:text-is('Reasoning')")
    assert replies(page) == [ANSWER.replace("**", "")]
    assert page.errors == []


def test_a_reasoning_reply_streams_and_stores_its_reasoning_apart_from_its_answer(web):
    client = Client(web.url)
    cid = client.new_conversation(model=THINKER, system_prompt=THINKING)
    events = client.events("POST", f"/conversations/{cid}/messages",
                           json={"content": "Why is the sea salty?", "model": THINKER})
    pieces = [data for name, data in events if name == "text"]
    streamed_reasoning = "".join(p["reasoning"] for p in pieces)
    streamed_answer = "".join(p["text"] for p in pieces)
    assert streamed_reasoning == REASONING and streamed_answer.strip() == ANSWER
    # live, as it is written: the reasoning in many pieces, all of it before the answer begins
    thinking = [i for i, p in enumerate(pieces) if p["reasoning"]]
    answering = [i for i, p in enumerate(pieces) if p["text"]]
    assert len(thinking) >= 5 and max(thinking) <= min(answering)  # the last thought and the first words may share one
    ended = events[-1][1]["reply"]
    assert (ended["reasoning"], ended["content"]) == (REASONING, streamed_answer)

    stored = client.call("GET", f"/conversations/{cid}").json()["messages"][-1]
    assert (stored["reasoning"], stored["content"]) == (REASONING, streamed_answer)
    assert "<think>" not in stored["content"] and "Rivers wash" not in stored["content"]
    markdown = client.call("GET", f"/conversations/{cid}/export", params={"format": "markdown"}).text
    assert f"<details><summary>Reasoning</summary>\n\n{REASONING}\n\n</details>" in markdown

    # a reply that does not reason (the same model, parser and all): no reasoning anywhere
    plain = client.new_conversation(model=THINKER, system_prompt="You are a sailor who knows the sea.")
    events = client.events("POST", f"/conversations/{plain}/messages", json={"content": "hi", "model": THINKER})
    assert all(d["reasoning"] == "" for n, d in events if n == "text")
    assert events[-1][1]["reply"]["reasoning"] is None and "sailor" in events[-1][1]["reply"]["content"]


def test_the_reasoning_is_not_sent_back_to_the_model(web):
    """The raw template's echo is the whole conversation: the second reply shows what the model was given."""
    client = Client(web.url)
    cid = client.new_conversation(model=RAW)
    first = client.events("POST", f"/conversations/{cid}/messages",
                          json={"content": "<think>Only I see this.</think>Hello. ", "model": RAW})[-1][1]["reply"]
    assert (first["reasoning"], first["content"]) == ("Only I see this.", "Hello. ")
    second = client.events("POST", f"/conversations/{cid}/messages",
                           json={"content": "And again?", "model": RAW})[-1][1]["reply"]
    # given: the question, the first reply's answer alone (no reasoning, no <think>), the new question
    assert second["content"] == "Hello. Hello. And again?"


def test_an_arena_round_streams_each_sides_reasoning(web):
    client = Client(web.url)
    battle = client.call("POST", "/arena/battles", json={"models": [RAW, THINKER]}).json()
    events = client.events("POST", f"/arena/battles/{battle['id']}/messages",
                           json={"content": "<think>Weighing it up.</think>Both are fine."})
    pieces = [d for n, d in events if n == "text"]
    for side, reasoning in ((0, "Weighing it up."), (1, "")):
        assert "".join(p["data"]["reasoning"] for p in pieces if p["side"] == side) == reasoning
    ended = {d["side"]: d["data"]["reply"] for n, d in events if n == "ended"}
    assert (ended[0]["reasoning"], ended[0]["content"]) == ("Weighing it up.", "Both are fine.")
    assert ended[1]["reasoning"] is None  # the one-shot template's echo (no system prompt) does not reason
    shown = client.call("GET", f"/arena/battles/{battle['id']}").json()["sides"][0]["messages"][-1]
    assert shown["reasoning"] == "Weighing it up."
