"""The web app (/app/ of `parley web`) in a real browser: Playwright driving Debian's headless Chromium against
`parley serve` on 127.0.0.1 with the bundled model, plus echo workers where a test needs a model to come and go.
Screenshots go to test-artifacts/screens/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from parley.store.accounts import Accounts
from parley.store.database import Database
from tests.browser import (  # noqa: F401 - the browser fixture
    CHROMIUM,
    MODEL,
    REPO,
    SHOTS,
    Stack,
    browser,
    stored_messages,
    wait_until,
)
from tests.servers import Server, start_controller, start_worker

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
MESSAGE = "textarea[aria-label=Message]"
REPLIES = "article.message.assistant"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("web-app"))
    yield s
    s.stop()


def start_web(controller: Server, db_url: str, *extra: str) -> Server:
    web = Server("web", "--controller-address", controller.url, "--db-url", db_url, *extra, secret=controller.secret)
    return web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web")


def open_app(browser, url: str, viewport=(1400, 1000)):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url.rstrip("/") + "/app/")
    return page


def pick(page, model: str, temperature: str = "0", max_tokens: str = "48") -> None:
    page.wait_for_selector(f"select[aria-label=Model] option[value='{model}']", state="attached")
    page.select_option("select[aria-label=Model]", model)
    if not page.is_visible("section.settings"):
        page.click("button.settings-toggle")
    page.fill("section.settings input[type=range] >> nth=0", temperature)
    page.fill("section.settings input[type=number]", max_tokens)


def replies(page) -> list[str]:
    return [t.strip() for t in page.locator(f"{REPLIES} .markdown").all_inner_texts()]


def send(page, text: str) -> None:
    page.fill(MESSAGE, text)
    page.press(MESSAGE, "Enter")


def wait_done(page, count: int, timeout: float = 180) -> str:
    """The text of reply number `count` once it has ended (Send is back)."""
    wait_until(lambda: len(replies(page)) >= count and page.is_visible("button.send"), "the reply never ended", timeout)
    return replies(page)[count - 1]


def test_chat_streams_with_stop_in_place_of_send_and_the_history_survives_a_reload(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, MODEL)
    send(page, "What is the capital of France?")
    page.wait_for_selector("button.stop")  # Send became Stop while the reply streams
    assert page.input_value(MESSAGE) == ""
    answer = wait_done(page, 1)
    assert "Paris" in answer  # the bundled model, greedy
    page.wait_for_selector("nav.history a:has-text('What is the capital of France?')")
    page.screenshot(path=str(SHOTS / "app-chat.png"))

    page.reload()  # the conversation is the page's address: it comes back, from the store
    page.wait_for_selector(f"{REPLIES} .markdown:has-text('Paris')")
    assert page.locator("article.message.user .bubble").all_inner_texts() == ["What is the capital of France?"]
    pick(page, MODEL)
    send(page, "And what is the capital of Germany?")
    second = wait_done(page, 2)
    assert second and second != answer
    rows = [m for m in stored_messages(stack.db_url) if m.content in ("What is the capital of France?", answer,
                                                                       "And what is the capital of Germany?", second)]
    assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
    assert page.errors == []


def test_stop_keeps_what_was_written_and_marks_it(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, MODEL, temperature="0.7", max_tokens="1000")
    send(page, "Write a very long story about a dragon who bakes bread.")
    wait_until(lambda: len(replies(page)) == 1 and len(replies(page)[0]) > 20, "no text streamed", 120)
    page.click("button.stop")
    page.wait_for_selector(f"{REPLIES}[data-finish=stopped]")
    assert page.locator(f"{REPLIES} .reply-mark").inner_text() == "Stopped."
    shown = replies(page)[0]
    stored = [m for m in stored_messages(stack.db_url) if m.role == "assistant" and m.finish_reason == "stopped"]
    assert stored and stored[-1].content.strip() == shown
    assert page.errors == []


def test_a_failed_reply_is_shown_in_the_conversation_and_retry_answers(stack, browser):
    page = open_app(browser, stack.url)
    flaky = start_worker(stack.controller, names="flaky-model", echo=True)
    pick(page, "flaky-model")  # it joined while the page was open: the list is live
    flaky.kill()
    send(page, "hello there")
    page.wait_for_selector(f"{REPLIES} .reply-error")
    error = page.locator(f"{REPLIES} .reply-error").inner_text()
    assert "flaky-model" in error or "reach" in error, error
    assert page.input_value("select[aria-label=Model]") == "flaky-model"  # a model that went away stays chosen
    again = start_worker(stack.controller, names="flaky-model", echo=True)
    try:
        page.click(f"{REPLIES} .reply-error button:has-text('Retry')")
        answer = wait_done(page, 1)
        assert answer and not page.is_visible(f"{REPLIES} .reply-error")
    finally:
        again.stop()
    stored = [m for m in stored_messages(stack.db_url) if m.model == "flaky-model"]
    assert [m.finish_reason for m in stored] in (["stop"], ["length"])  # the failed reply was replaced by the retry
    assert page.errors == []


def test_two_users_sending_at_once_are_answered_at_once(stack, browser):
    """The second user's first token comes before the first user's reply ends."""
    pages = [open_app(browser, stack.url) for _ in range(2)]
    for page in pages:
        pick(page, MODEL, max_tokens="160")
    prompts = ["Write a long story about a dragon who loves bread.", "Write a long story about a robot at sea."]
    for page, prompt in zip(pages, prompts):
        page.fill(MESSAGE, prompt)
    sent = time.monotonic()
    for page in pages:
        page.press(MESSAGE, "Enter")
    first: list[float | None] = [None, None]
    last_growth: list[tuple[float, int]] = [(0.0, 0), (0.0, 0)]
    while time.monotonic() - sent < 240:
        for i, page in enumerate(pages):
            shown = replies(page)
            n = len(shown[0]) if shown else 0
            now = time.monotonic() - sent
            if n and first[i] is None:
                first[i] = now
            if n != last_growth[i][1]:
                last_growth[i] = (now, n)
        if all(page.is_visible("button.send") for page in pages) and None not in first:
            break
        time.sleep(0.05)
    assert None not in first
    ends = [t for t, _ in last_growth]
    second = 0 if first[0] > first[1] else 1
    print(f"first tokens at {first[0]:.2f} s and {first[1]:.2f} s; replies ended at {ends[0]:.2f} s and {ends[1]:.2f} s")
    assert first[second] < ends[1 - second], (first, ends)
    for page in pages:
        assert page.errors == []
        page.context.close()


def test_rename_in_place_and_delete_with_undo(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, "echo-model")
    send(page, "a conversation to rename")
    wait_done(page, 1)
    item = "nav.history li:has-text('a conversation to rename')"
    page.hover(item)
    page.click(f"{item} button[aria-label^=Rename]")
    page.fill("nav.history li input", "Renamed chat")
    page.press("nav.history li input", "Enter")
    page.wait_for_selector("nav.history a:has-text('Renamed chat')")
    db = Database(stack.db_url)
    assert "Renamed chat" in [c.title for c in _conversations(db)]
    page.hover("nav.history li:has-text('Renamed chat')")
    page.click("nav.history li:has-text('Renamed chat') button[aria-label^=Delete]")
    page.wait_for_selector(".toast:has-text('Deleted')")
    assert not page.is_visible("nav.history a:has-text('Renamed chat')")
    page.click(".toast button:has-text('Undo')")
    page.wait_for_selector("nav.history a:has-text('Renamed chat')")
    time.sleep(7)  # past the undo window: nothing was deleted
    assert "Renamed chat" in [c.title for c in _conversations(db)]
    page.hover("nav.history li:has-text('Renamed chat')")
    page.click("nav.history li:has-text('Renamed chat') button[aria-label^=Delete]")
    wait_until(lambda: "Renamed chat" not in [c.title for c in _conversations(db)], "not deleted after the undo window",
               20)
    db.close()
    assert page.errors == []


def _conversations(db: Database):
    from parley.store.models import Conversation

    with db.session() as s:
        return s.query(Conversation).all()


def test_the_model_list_says_when_no_model_is_served_and_fills_in_when_one_joins(browser, tmp_path: Path):
    controller = start_controller("--heart-beat-expiration", "3", secret="web-app-empty-cluster-secret-01")
    web = start_web(controller, f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        page = open_app(browser, web.url)
        page.wait_for_selector("#no-models:has-text('No model is being served right now')")
        page.fill(MESSAGE, "hello?")
        assert page.is_disabled("button.send")
        worker = start_worker(controller, names="newcomer", echo=True)
        try:
            page.wait_for_selector("select[aria-label=Model] option[value=newcomer]", state="attached", timeout=20_000)
            assert not page.is_visible("#no-models") and page.is_enabled("button.send")
        finally:
            worker.stop()
        page.wait_for_selector("#no-models:has-text('No model is being served right now')", timeout=30_000)
        assert page.errors == []
    finally:
        web.stop()
        controller.stop()


def test_on_a_phone_the_conversation_comes_first_and_the_history_opens_from_the_menu(stack, browser):
    page = open_app(browser, stack.url, viewport=(390, 844))
    page.wait_for_selector(MESSAGE)
    box = page.locator("aside.sidebar").bounding_box()
    assert box is None or box["x"] + box["width"] <= 1  # off screen
    page.click("button[aria-label='Show conversations']")
    wait_until(lambda: page.locator("aside.sidebar").bounding_box()["x"] >= 0, "the history did not open")
    page.screenshot(path=str(SHOTS / "app-phone.png"))
    assert page.errors == []


def axe_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (make installs web/node_modules)")
def test_no_serious_accessibility_violations_in_light_and_dark(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, "echo-model")
    send(page, "Show me `code`:\n```python\nprint('hi')\n```")
    wait_done(page, 1)
    for theme in ("light", "dark"):
        page.select_option("select[aria-label=Theme]", theme)
        assert axe_violations(page) == [], theme


def test_with_auth_each_account_signs_in_and_sees_only_its_own(stack, browser, tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'auth.db'}"
    db = Database(db_url)
    db.upgrade()
    Accounts(db).create("alice", "alice-password-1")
    Accounts(db).create("bob", "bob-password-12")
    db.close()
    web = start_web(stack.controller, db_url, "--auth")
    try:
        alice = open_app(browser, web.url)
        alice.wait_for_selector("form[aria-labelledby=login-title]")
        if AXE.exists():
            assert axe_violations(alice) == []
        alice.fill("input[name=username]", "alice")
        alice.fill("input[name=password]", "wrong")
        alice.click("button[type=submit]")
        alice.wait_for_selector("p.error:has-text('wrong username or password')")
        alice.fill("input[name=password]", "alice-password-1")
        alice.click("button[type=submit]")
        pick(alice, "echo-model")
        send(alice, "alice's private plans")
        wait_done(alice, 1)
        address = alice.url
        assert "#/c/" in address

        bob = open_app(browser, web.url)
        bob.fill("input[name=username]", "bob")
        bob.fill("input[name=password]", "bob-password-12")
        bob.click("button[type=submit]")
        bob.wait_for_selector("text=Signed in as")
        assert bob.locator("nav.history a").count() == 0
        bob.goto(address)
        bob.reload()
        bob.wait_for_selector("#notice:has-text('no such conversation')")
        assert "alice" not in bob.inner_text("body").replace("Signed in as bob", "")
    finally:
        web.stop()


def test_regenerate_keeps_versions_and_edit_makes_a_branch_with_the_old_one_reachable(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, "echo-model")
    page.fill("section.settings textarea", "Answer one.")
    send(page, "first question")
    assert "Answer one." in wait_done(page, 1)  # the echo model repeats the system prompt
    page.fill("section.settings textarea", "Answer two.")
    page.locator("section.settings textarea").blur()  # stored for the conversation
    page.click(f"{REPLIES} .reply-actions button:has-text('Regenerate')")
    wait_until(lambda: "Answer two." in " ".join(replies(page)) and page.is_visible("button.send"), "no new version")
    assert page.locator(f"{REPLIES} .version-count").inner_text() == "2/2"
    page.click(f"{REPLIES} button[aria-label='Previous version']")
    wait_until(lambda: "Answer one." in replies(page)[0], "the earlier version was not shown")
    assert page.locator(f"{REPLIES} .version-count").inner_text() == "1/2"

    page.hover("article.message.user")
    page.click("article.message.user button.edit")
    page.fill("textarea[aria-label='Edit your message']", "first question, edited")
    page.click("article.message.user .edit-box button:has-text('Send')")
    wait_until(lambda: page.is_visible("button.send") and page.locator("article.message.user .bubble").inner_text()
               == "first question, edited", "the edit was not sent")
    assert page.locator("article.message.user .version-count").inner_text() == "2/2"
    assert len(replies(page)) == 1
    page.click("article.message.user button[aria-label='Previous version']")
    wait_until(lambda: page.locator("article.message.user .bubble").inner_text() == "first question",
               "the earlier branch was not shown")
    assert "Answer one." in replies(page)[0]  # the branch as it was left: its first reply shown
    page.screenshot(path=str(SHOTS / "app-versions.png"))
    page.reload()
    page.wait_for_selector("article.message.user .bubble:has-text('first question')")
    assert page.locator("article.message.user .bubble").inner_text() == "first question"  # kept in the store
    assert page.errors == []


def test_a_reply_cut_at_the_token_limit_is_marked_and_continue_writes_on(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, MODEL, max_tokens="12")
    send(page, "Write a long story about a dragon who bakes bread.")
    cut = wait_done(page, 1)
    page.wait_for_selector(f"{REPLIES}[data-finish=length] .reply-mark:has-text('token limit')")
    page.fill("section.settings input[type=number]", "48")
    page.click(f"{REPLIES} button:has-text('Continue')")
    wait_until(lambda: page.is_visible("button.send") and len(replies(page)[0]) > len(cut),
               lambda: f"Continue wrote nothing: {page.inner_text('main.chat')}")
    longer = replies(page)[0]
    assert longer.startswith(cut) and len(replies(page)) == 1
    stored = [m for m in stored_messages(stack.db_url) if m.role == "assistant" and m.content.strip() == longer]
    assert stored and stored[0].finish_reason in ("stop", "length")
    assert page.errors == []


def test_arena_side_by_side_vote_reveals_and_is_stored(stack, browser):
    page = open_app(browser, stack.url)
    page.wait_for_selector(f"select[aria-label=Model] option[value='{MODEL}']", state="attached")
    page.click("nav.pages a:has-text('Arena')")
    page.click("button:has-text('Side by side')")
    page.select_option("select[aria-label='Model A']", "echo-model")
    page.select_option("select[aria-label='Model B']", MODEL)
    page.fill("textarea[aria-label='Message to every model']", "What is the capital of France?")
    page.press("textarea[aria-label='Message to every model']", "Enter")
    wait_until(lambda: page.is_enabled(".votes button:has-text('A is better')"), "the vote never opened", 180)
    texts = page.locator(".side .markdown").all_inner_texts()
    assert len(texts) == 2 and all(t.strip() for t in texts)
    page.click(".votes button:has-text('B is better')")
    page.wait_for_selector(".votes [role=status]:has-text('Thanks for your vote')")
    assert page.locator(".side h2").all_inner_texts() == ["Model A: echo-model", f"Model B: {MODEL}"]
    page.screenshot(path=str(SHOTS / "app-arena.png"))
    if AXE.exists():
        assert axe_violations(page) == []
    votes = [v for v in _votes(stack.db_url) if v.model_a == "echo-model" and v.model_b == MODEL]
    assert [(v.kind, v.anony) for v in votes] == [("model_b", False)]
    assert page.errors == []


def _votes(db_url: str):
    from parley.store.models import Vote

    db = Database(db_url)
    with db.session() as s:
        rows = s.query(Vote).all()
    db.close()
    return rows


def test_the_leaderboard_shows_ratings_with_intervals_and_mt_bench_by_category(stack, browser):
    from parley.arena_record import Battle
    from parley.eval import arena_leaderboard
    from parley.eval.arena_battles import Cleaning

    results = ["model_a"] * 6 + ["model_b"] * 3 + ["tie"] * 2
    battles = [Battle(model_a="strong-model", model_b="weak-model", winner=w, tstamp=i)
               for i, w in enumerate(results)]
    board = arena_leaderboard.build(battles, Cleaning(records=12, battles=11, dropped={"identity revealed": 1}),
                                    rounds=50, elo_rounds=5)
    arena_leaderboard.write(board, stack.data_home / "arena_ratings", plots=False)
    mt = stack.data_home / "mt_bench"
    (mt / "model_judgment").mkdir(parents=True, exist_ok=True)
    (mt / "question.jsonl").write_text("".join(json.dumps({"question_id": i, "category": c, "turns": ["q"]}) + "\n"
                                               for i, c in enumerate(["writing", "math", "coding", "reasoning"])))
    (mt / "model_judgment" / "gpt-4_single.jsonl").write_text("".join(
        json.dumps({"model": m, "question_id": i, "turn": 1, "score": s}) + "\n"
        for m, scores in (("strong-model", (9, 6, 8, 7)), ("weak-model", (4, 2, 3, 5))) for i, s in enumerate(scores)))
    page = open_app(browser, stack.url)
    page.click("nav.pages a:has-text('Leaderboard')")
    page.wait_for_selector("#leaderboard-status:has-text('battles')")
    rows = page.locator(".leaderboard tbody tr").all_inner_texts()
    assert rows[0].split("\t")[:2] == ["1", "strong-model"] and "weak-model" in rows[1]
    assert "7.50" in rows[0]  # its MT-bench average
    assert page.locator("svg.intervals line.range").count() == 2
    assert "identity revealed: 1" in page.inner_text(".not-counted")
    assert page.locator("svg.radar polygon.model").count() == 2
    page.screenshot(path=str(SHOTS / "app-leaderboard.png"), full_page=True)
    if AXE.exists():
        assert axe_violations(page) == []
    assert page.errors == []


def test_latex_in_a_reply_is_typeset_once_katex_loads(stack, browser):
    page = open_app(browser, stack.url)
    pick(page, "echo-model")
    page.fill("section.settings textarea", "Energy: $E = mc^2$ and $$\\int_0^1 x\\,dx = \\frac{1}{2}$$")
    send(page, "a formula please")
    wait_done(page, 1)
    page.wait_for_selector(f"{REPLIES} .katex")  # the echo model repeats the system prompt, formulas included
    assert page.locator(f"{REPLIES} .katex-display").count() == 1
    assert page.errors == []


def test_an_anonymous_battle_hides_the_names_until_the_vote_then_reveals_them(browser, tmp_path: Path):
    controller = start_controller(secret="web-app-battle-cluster-secret-1")
    workers = [start_worker(controller, names=name, echo=True) for name in ("left-model", "right-model")]
    web = start_web(controller, f"sqlite:///{tmp_path / 'battle.db'}")
    try:
        page = open_app(browser, web.url)
        page.wait_for_selector("select[aria-label=Model] option[value='right-model']", state="attached")
        page.click("nav.pages a:has-text('Arena')")
        page.fill("textarea[aria-label='Message to every model']", "Say something.")
        page.press("textarea[aria-label='Message to every model']", "Enter")
        wait_until(lambda: page.is_enabled(".votes button:has-text('Tie')"), "the vote never opened", 60)
        assert page.locator(".side h2").all_inner_texts() == ["Model A", "Model B"]
        assert "left-model" not in page.inner_text("section.arena") and "right-model" not in page.inner_text(
            "section.arena")
        page.click(".votes button:has-text('Tie')")
        page.wait_for_selector(".votes [role=status]:has-text('Thanks for your vote')")
        names = sorted(t.split(": ")[1] for t in page.locator(".side h2").all_inner_texts())
        assert names == ["left-model", "right-model"]
        db = Database(f"sqlite:///{tmp_path / 'battle.db'}")
        from parley.store.models import Vote

        with db.session() as s:
            assert [(v.kind, v.anony) for v in s.query(Vote).all()] == [("tie", True)]
        db.close()
        assert page.errors == []
    finally:
        web.stop()
        for worker in workers:
            worker.stop()
        controller.stop()
