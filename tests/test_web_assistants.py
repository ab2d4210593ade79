"""Assistants and knowledge in the web app, in a real browser (Playwright driving Debian's headless Chromium)
against `parley serve` on 127.0.0.1: the bundled chat model and the bundled embedding model, plus an echo worker.

A collection made and a PDF uploaded in the browser, an assistant made over it, its starter prompt sent, its
parameters applied, the answer (greedy, from the bundled 135M model) citing the page it came from; two users
who cannot see each other's assistants or knowledge; an assistant in the Arena beside a model."""

from __future__ import annotations

import httpx
import pytest

from parley.store.accounts import Accounts
from parley.store.database import Database
from parley.store.models import Conversation, Message
from tests.browser import (  # noqa: F401 - the browser fixture
    CHROMIUM,
    MODEL,
    REPO,
    SHOTS,
    Stack,
    browser,
    wait_until,
)
from tests.knowledge_files import pdf_bytes
from tests.test_web_api import Client, start_web
from tests.test_web_app import AXE, REPLIES, axe_violations, open_app, replies

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
QUESTION = "What is the phosphorus discharge limit for the Kestrel Lake treatment works?"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("web-assistants"), embeddings=True)
    yield s
    s.stop()


def stored(db_url: str, model, *where):
    db = Database(db_url)
    with db.session() as s:
        rows = s.query(model).filter(*where).all()
    db.close()
    return rows


def upload(page, collection: str, path) -> None:
    page.goto(page.url.split("#")[0] + "#/knowledge")
    page.fill("input[aria-label='New collection name']", collection)
    page.click("form.new-collection button[type=submit]")
    page.wait_for_selector(f".collection h2:has-text('{collection}')")
    page.set_input_files("input[aria-label='Upload documents']", str(path))
    page.wait_for_selector(".uploads li [role=status]:has-text('added')", timeout=120_000)
    page.wait_for_selector(f"table.documents td:has-text('{path.name}')")


def test_an_assistant_made_in_the_browser_answers_from_an_uploaded_pdf_and_cites_its_page(stack, browser, tmp_path):
    pdf = tmp_path / "kestrel.pdf"
    pdf.write_bytes(pdf_bytes())
    page = open_app(browser, stack.url)
    upload(page, "Kestrel reports", pdf)
    row = page.locator("table.documents tbody tr").first.inner_text()
    assert "kestrel.pdf" in row and "\t3\t3\t" in row  # 3 pages, 3 chunks

    page.goto(stack.url + "app/#/assistants")
    page.click("button:has-text('+ New assistant')")
    page.fill("input[name=name]", "EIA expert")
    page.fill("input[name=description]", "Answers from the Kestrel Lake reports")
    page.select_option("select[name=base_model]", MODEL)
    page.fill("textarea[name=system_prompt]", "You are an environmental impact assessment expert.")
    page.fill("input[name=temperature]", "0")
    page.fill("input[name=max_tokens]", "40")
    page.fill("textarea[name=starters]", QUESTION)
    page.check("label.check:has-text('Kestrel reports') input")
    page.click("form.assistant-form button[type=submit]")
    page.wait_for_selector("li.card h2:has-text('EIA expert')")
    page.click("li.card:has-text('EIA expert') button:has-text('Chat')")

    page.wait_for_selector(".empty:has-text('Answers from the Kestrel Lake reports')")
    assert "Kestrel reports" in page.inner_text(".empty")
    page.click("button.settings-toggle")  # the assistant's parameters, applied to the new chat
    assert page.input_value("section.settings input[type=number]") == "40"
    assert page.input_value("section.settings input[type=range] >> nth=0") == "0"
    page.click(f".starters button:has-text('{QUESTION[:30]}')")
    wait_until(lambda: len(replies(page)) == 1 and page.is_visible("button.send"), "the reply never ended", 180)
    answer = replies(page)[0]
    assert "0.4 milligrams" in answer, answer
    page.wait_for_selector(f"{REPLIES} details.citations li:has-text('kestrel.pdf, page 3')")
    assert page.inner_text(f"{REPLIES} .who") == "EIA expert"
    page.wait_for_selector("nav.history a:has-text('EIA expert')")  # the history shows who it was with
    page.screenshot(path=str(SHOTS / "app-citations.png"))  # the README's docs/app-citations.png, copied by hand

    conversation = stored(stack.db_url, Conversation, Conversation.title.like("What is the phosphorus%"))[0]
    assert conversation.assistant_id and conversation.model == conversation.assistant_id
    reply = stored(stack.db_url, Message, Message.conversation_id == conversation.id, Message.role == "assistant")[0]
    assert reply.parameters["temperature"] == 0 and reply.parameters["max_tokens"] == 40
    assert reply.sources[0]["page"] == 3 and reply.sources[0]["filename"] == "kestrel.pdf"

    page.reload()  # the citations come back from the store
    page.wait_for_selector(f"{REPLIES} details.citations li:has-text('kestrel.pdf, page 3')")
    if AXE.exists():
        assert axe_violations(page) == []
        page.goto(stack.url + "app/#/assistants")
        page.wait_for_selector("li.card")
        page.screenshot(path=str(SHOTS / "app-assistants.png"))
        assert axe_violations(page) == []
        page.goto(stack.url + "app/#/knowledge")
        page.wait_for_selector("table.documents")
        page.screenshot(path=str(SHOTS / "app-knowledge.png"))
        assert axe_violations(page) == []
    assert page.errors == []


def test_a_file_that_cannot_be_read_says_why_and_the_others_still_go_in(stack, browser, tmp_path):
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not really")
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe heron colony nests in the alder carr.\n")
    page = open_app(browser, stack.url)
    page.goto(stack.url + "app/#/knowledge")
    page.fill("input[aria-label='New collection name']", "Mixed uploads")
    page.click("form.new-collection button[type=submit]")
    page.wait_for_selector(".collection h2:has-text('Mixed uploads')")
    page.set_input_files("input[aria-label='Upload documents']", [str(broken), str(notes)])
    page.wait_for_selector(".uploads li.error:has-text('cannot be read as application/pdf')")
    page.wait_for_selector(".uploads li:has-text('notes.md') [role=status]:has-text('added')")
    page.wait_for_selector("table.documents td:has-text('notes.md')")
    assert page.locator("table.documents tbody tr").count() == 1  # the broken file left nothing
    assert page.errors == []


def test_two_users_see_neither_each_others_assistants_nor_knowledge(stack, browser, tmp_path):
    db = Database(stack.db_url)
    accounts = Accounts(db)
    accounts.create("carol", "carol-password-1")
    accounts.create("dave", "dave-password-1")
    db.close()
    web = start_web(stack.controller, stack.db_url, "--auth")
    try:
        carol, dave = Client(web.url), Client(web.url)
        assert carol.login("carol", "carol-password-1").status_code == 200
        assert dave.login("dave", "dave-password-1").status_code == 200
        collection = carol.call("POST", "/collections", json={"name": "Carol's notes"}).json()
        doc = carol.call("POST", f"/collections/{collection['id']}/documents", params={"filename": "k.pdf"},
                         content=pdf_bytes())
        assert doc.status_code == 201, doc.text
        assistant = carol.call("POST", "/assistants", json={
            "name": "Carol's expert", "base_model": "echo-model", "collections": [collection["id"]]}).json()
        shared_refused = carol.call("POST", "/assistants", json={"name": "x", "base_model": "echo-model",
                                                                 "shared": True})
        assert shared_refused.status_code == 403  # sharing assistants is for admins

        page = open_app(browser, web.url)
        page.fill("input[name=username]", "dave")
        page.fill("input[name=password]", "dave-password-1")
        page.click("button[type=submit]")
        page.wait_for_selector("text=Signed in as")
        page.goto(web.url + "/app/#/knowledge")
        page.wait_for_selector("ul.collection-list li:has-text('No collections yet.')")
        page.goto(web.url + "/app/#/assistants")
        page.wait_for_selector("li:has-text('No assistants yet.')")
        assert "Carol" not in page.inner_text("body")
        assert page.locator(f"select[aria-label=Model] option[value='{assistant['id']}']").count() == 0

        for method, path, kw in (
                ("GET", f"/collections/{collection['id']}", {}),
                ("GET", f"/collections/{collection['id']}/documents", {}),
                ("POST", f"/collections/{collection['id']}/search", {"json": {"query": "phosphorus"}}),
                ("POST", f"/collections/{collection['id']}/documents", {"params": {"filename": "x.md"},
                                                                      "content": b"# x\nwords"}),
                ("DELETE", f"/documents/{doc.json()['id']}", {}),
                ("DELETE", f"/collections/{collection['id']}", {}),
                ("GET", f"/assistants/{assistant['id']}", {}),
                ("PUT", f"/assistants/{assistant['id']}", {"json": {"name": "mine", "base_model": "echo-model"}}),
                ("DELETE", f"/assistants/{assistant['id']}", {}),
                ("POST", "/conversations", {"json": {"model": assistant["id"]}})):
            r = dave.call(method, path, **kw)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        r = dave.call("POST", "/assistants", json={"name": "Dave's", "base_model": "echo-model",
                                                   "collections": [collection["id"]]})
        assert r.status_code == 404  # nor can he build an assistant on her collection
        assert carol.call("GET", f"/collections/{collection['id']}").json()["documents"] == 1
        found = carol.call("POST", f"/collections/{collection['id']}/search", json={"query": "Heron Cottage noise"})
        assert found.json()["sources"][0]["page"] == 2
        assert dave.call("POST", f"/collections/{collection['id']}/reindex", json={}).status_code == 404
        again = carol.call("POST", f"/collections/{collection['id']}/reindex", json={})
        assert again.status_code == 200 and again.json()["chunks"] == 3
        other = carol.call("POST", f"/collections/{collection['id']}/reindex", json={"embedding_model": "nomodel"})
        assert other.status_code == 404 and "nomodel" in other.json()["error"]["message"]
        assert carol.call("GET", f"/collections/{collection['id']}").json()["embedding_model"] == "all-minilm-l6-v2"
        assert page.errors == []
    finally:
        web.stop()


def test_an_assistant_takes_a_side_in_the_arena(stack):
    client = Client(stack.url.rstrip("/"))
    assistant = client.call("POST", "/assistants", json={
        "name": "Echo with a role", "base_model": "echo-model", "system_prompt": "You are a soil and water engineer.",
        "max_tokens": 64}).json()
    models = client.call("GET", "/models").json()
    assert "all-minilm-l6-v2" not in [m["name"] for m in models["models"]]  # the embedding model is not for chat
    assert assistant["id"] in [a["id"] for a in models["assistants"]]
    battle = client.call("POST", "/arena/battles", json={"models": [assistant["id"], "echo-model"]})
    assert battle.status_code == 201, battle.text
    with client.http.stream("POST", f"/arena/battles/{battle.json()['id']}/messages",
                            headers={"X-CSRF-Token": client.csrf},
                            json={"content": "drainage?", "parameters": {"temperature": 0, "max_tokens": 64}}) as r:
        body = r.read().decode()
    assert "You are a soil and water engineer." in body  # the assistant's side got its role (the echo shows it)
    missing = client.call("POST", "/arena/battles", json={"models": ["asst_nosuchassistant", "echo-model"]})
    assert missing.status_code == 404
    # an admin puts a shared assistant into anonymous battles: the draw takes it beside the models
    judged = client.call("POST", "/assistants", json={
        "name": "Judged expert", "base_model": "echo-model", "shared": True, "in_battles": True}).json()
    drawn = set()
    for _ in range(30):
        sides = client.call("POST", "/arena/battles", json={"models": None}).json()["sides"]
        assert all(side["model"] is None for side in sides)  # hidden until the vote
        drawn |= {c.model for c in stored(stack.db_url, Conversation, Conversation.id.in_(
            [side["conversation_id"] for side in sides]))}
        if judged["id"] in drawn:
            break
    assert judged["id"] in drawn and assistant["id"] not in drawn  # only those an admin put in
    assert httpx.get(stack.url + "health").status_code == 200
