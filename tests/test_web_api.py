"""The web app's JSON API (`parley web`, under /api), against real servers on 127.0.0.1: a controller, an echo
worker (these tests are about the API's behaviour, not inference: the browser tests use the bundled model) and
`parley web` itself, local and with --auth."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from parley.store.accounts import Accounts
from parley.store.database import Database
from tests.servers import Server, models_at, start_controller, start_worker

SECRET = "web-api-test-cluster-secret-012345"
ECHO = "echo-model"


def start_web(controller: Server, db_url: str, *extra: str) -> Server:
    web = Server("web", "--controller-address", controller.url, "--db-url", db_url, *extra, secret=controller.secret)
    return web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web")


class Client:
    """A browser's view of the API: a cookie jar and the CSRF token of its session."""

    def __init__(self, url: str, headers: dict | None = None):
        self.http = httpx.Client(base_url=url + "/api", timeout=30, headers=headers)
        self.csrf = self.http.get("/session").json()["csrf_token"]

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        return self.http.request(method, path, headers={"X-CSRF-Token": self.csrf}, **kw)

    def login(self, username: str, password: str) -> httpx.Response:
        r = self.call("POST", "/login", json={"username": username, "password": password})
        if r.status_code == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def events(self, method: str, path: str, **kw) -> list[tuple[str, dict]]:
        with self.http.stream(method, path, headers={"X-CSRF-Token": self.csrf}, **kw) as r:
            assert r.status_code == 200, r.read()
            return parse_sse(r.iter_lines())

    def new_conversation(self, **kw) -> str:
        r = self.call("POST", "/conversations", json={"model": ECHO, **kw})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def wait_for_models(controller: Server, names: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sorted(models_at(controller)) != sorted(names):
        assert time.monotonic() < deadline, f"the controller lists {models_at(controller)}, not {names}"
        time.sleep(0.2)


def parse_sse(lines) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    controller = start_controller("--heart-beat-expiration", "3", secret=SECRET)  # a stopped worker leaves soon
    worker = start_worker(controller, names=ECHO, echo=True, delay_s=0.02)
    tmp = tmp_path_factory.mktemp("web-api")
    web = start_web(controller, f"sqlite:///{tmp / 'local.db'}")
    yield controller, web, tmp
    for server in (web, worker, controller):
        server.stop()


@pytest.fixture(scope="module")
def local(cluster) -> str:
    return cluster[1].url


def test_a_change_without_the_csrf_token_is_refused_as_openai_renders_errors(local):
    client = Client(local)
    r = client.http.post("/conversations", json={"model": ECHO})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "csrf_failed"
    r = client.http.post("/conversations", json={"model": ECHO}, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    assert client.call("GET", "/conversations").json()["conversations"] == []  # nothing was created


def test_a_message_streams_its_reply_and_both_are_stored(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt="You are a sailor who knows the sea.")
    events = client.events("POST", f"/conversations/{cid}/messages",
                           json={"content": "tell me about the sea", "model": ECHO})
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "ended" and names.count("text") >= 2
    started, ended = events[0][1], events[-1][1]
    assert started["user_message"]["content"] == "tell me about the sea"
    streamed = "".join(data["text"] for name, data in events if name == "text")
    assert ended["reply"]["content"] == streamed and "sailor" in streamed  # the echo model repeats the system prompt
    assert ended["reply"]["finish_reason"] in ("stop", "length")
    assert ended["reply"]["reasoning"] is None  # a model that does not reason (tests/test_web_reasoning.py: one that does)
    stored = client.call("GET", f"/conversations/{cid}").json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [("user", "tell me about the sea"),
                                                                       ("assistant", streamed)]
    listed = client.call("GET", "/conversations").json()["conversations"]
    assert listed[0]["id"] == cid and listed[0]["title"] == "tell me about the sea"


def test_stop_ends_the_reply_from_another_request_and_keeps_what_was_written(local):
    client = Client(local)
    long_text = " ".join(f"word{i}" for i in range(400))  # echoed back from the system prompt: 8 s of reply
    cid = client.new_conversation(system_prompt=long_text)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(client.events(
        "POST", f"/conversations/{cid}/messages", json={"content": "go", "model": ECHO})))
    reader.start()
    deadline = time.monotonic() + 30
    while not any(name == "text" for name, _ in got) and time.monotonic() < deadline:
        time.sleep(0.05)
        stored = client.call("GET", f"/conversations/{cid}").json()["messages"]
        if stored and stored[-1]["content"]:
            break
    # a second writer in the same conversation is refused while the reply is written
    r = client.call("POST", f"/conversations/{cid}/messages", json={"content": "again", "model": ECHO})
    assert r.status_code == 409 and r.json()["error"]["code"] == "reply_in_progress"
    assert client.call("POST", f"/conversations/{cid}/stop").json() == {"stopped": True}
    reader.join(30)
    ended = got[-1]
    assert ended[0] == "ended" and ended[1]["reply"]["finish_reason"] == "stopped"
    reply = client.call("GET", f"/conversations/{cid}").json()["messages"][-1]
    assert reply["finish_reason"] == "stopped" and 0 < len(reply["content"]) < len(long_text)
    assert client.call("POST", f"/conversations/{cid}/stop").json() == {"stopped": False}


def test_a_page_that_goes_away_loses_nothing_and_a_new_page_follows_the_reply(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt=" ".join(f"w{i}" for i in range(120)))
    with client.http.stream("POST", f"/conversations/{cid}/messages", headers={"X-CSRF-Token": client.csrf},
                            json={"content": "go", "model": ECHO}) as r:
        for line in r.iter_lines():
            if line.startswith("event: text"):
                break  # the page is closed after the first piece
    events = client.events("GET", f"/conversations/{cid}/reply")  # another page opens the conversation
    assert events[0][0] == "started" and events[-1][0] == "ended"
    followed = "".join(d["text"] for n, d in events if n == "text")
    final = events[-1][1]["reply"]
    assert final["finish_reason"] in ("stop", "length") and final["content"] == followed
    assert client.call("GET", f"/conversations/{cid}").json()["messages"][-1]["content"] == followed
    assert client.call("GET", f"/conversations/{cid}/reply").status_code == 404  # nothing is being written now


def test_a_refused_message_says_why_and_stores_nothing(local):
    client = Client(local)
    cid = client.new_conversation()
    r = client.call("POST", f"/conversations/{cid}/messages", json={"content": "   ", "model": ECHO})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Type a message first."
    r = client.call("POST", f"/conversations/{cid}/messages", json={"content": "x" * 9000, "model": ECHO})
    assert r.status_code == 400 and "limit is 8000" in r.json()["error"]["message"]
    r = client.call("POST", f"/conversations/{cid}/messages", json={"content": "hi", "model": ECHO,
                                                                   "parameters": {"temperature": 9}})
    assert r.status_code == 400 and r.json()["error"]["param"].endswith("temperature")
    assert client.call("GET", f"/conversations/{cid}").json()["messages"] == []


def test_a_model_that_is_not_served_fails_inline_and_regenerate_retries(local):
    client = Client(local)
    cid = client.new_conversation()
    events = client.events("POST", f"/conversations/{cid}/messages", json={"content": "hello", "model": "gone-model"})
    failed = events[-1][1]["reply"]
    assert failed["finish_reason"] == "error" and "gone-model" in failed["error"]
    events = client.events("POST", f"/conversations/{cid}/regenerate", json={"model": ECHO})
    retried = events[-1][1]["reply"]
    assert retried["id"] == failed["id"] and retried["finish_reason"] in ("stop", "length") and retried["content"]
    roles = [m["role"] for m in client.call("GET", f"/conversations/{cid}").json()["messages"]]
    assert roles == ["user", "assistant"]


def test_rename_system_prompt_search_export_and_delete(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt="You are an air-quality modelling expert.")
    client.events("POST", f"/conversations/{cid}/messages", json={"content": "ozone levels", "model": ECHO})
    changed = client.call("PATCH", f"/conversations/{cid}", json={"title": "Ozone", "system_prompt": "Be brief."})
    assert changed.status_code == 200
    assert changed.json()["title"] == "Ozone" and changed.json()["system_prompt"] == "Be brief."
    assert client.call("PATCH", f"/conversations/{cid}", json={"title": "  "}).status_code == 400
    assert [c["id"] for c in client.call("GET", "/conversations", params={"q": "ozone"}).json()["conversations"]] == [cid]
    md = client.call("GET", f"/conversations/{cid}/export", params={"format": "markdown"})
    assert md.status_code == 200 and md.text.startswith("# Ozone") and "ozone levels" in md.text
    assert "attachment" in md.headers["content-disposition"]
    assert client.call("DELETE", f"/conversations/{cid}").status_code == 204
    assert client.call("GET", f"/conversations/{cid}").status_code == 404
    assert cid not in [c["id"] for c in client.call("GET", "/conversations").json()["conversations"]]


def test_the_model_list_is_live(cluster):
    controller, web, _ = cluster
    client = Client(web.url)
    assert [m["name"] for m in client.call("GET", "/models").json()["models"]] == [ECHO]
    late = start_worker(controller, names="late-model", echo=True)
    try:
        listed = client.call("GET", "/models").json()
        assert [m["name"] for m in listed["models"]] == [ECHO, "late-model"] and listed["reachable"]
    finally:
        late.stop()
    deadline = time.monotonic() + 30
    while "late-model" in models_at(controller) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [m["name"] for m in client.call("GET", "/models").json()["models"]] == [ECHO]


def test_with_auth_each_account_sees_only_its_own(cluster, tmp_path: Path):
    controller = cluster[0]
    db_url = f"sqlite:///{tmp_path / 'auth.db'}"
    db = Database(db_url)
    db.upgrade()
    Accounts(db).create("alice", "alice-password-1")
    Accounts(db).create("bob", "bob-password-12")
    db.close()
    web = start_web(controller, db_url, "--auth")
    try:
        anonymous = Client(web.url)
        assert anonymous.http.get("/session").json()["signed_in"] is False
        r = anonymous.call("GET", "/conversations")
        assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"
        assert anonymous.login("alice", "wrong").status_code == 401
        assert anonymous.login("nobody", "wrong").json()["error"]["message"] == "wrong username or password"

        alice, bob = Client(web.url), Client(web.url)
        assert alice.login("alice", "alice-password-1").status_code == 200
        assert bob.login("bob", "bob-password-12").status_code == 200
        cid = alice.new_conversation()
        alice.events("POST", f"/conversations/{cid}/messages", json={"content": "alice's secret", "model": ECHO})
        assert bob.call("GET", "/conversations").json()["conversations"] == []
        for method, path, body in (("GET", f"/conversations/{cid}", None), ("DELETE", f"/conversations/{cid}", None),
                                   ("PATCH", f"/conversations/{cid}", {"title": "mine"}),
                                   ("POST", f"/conversations/{cid}/messages", {"content": "hi", "model": ECHO}),
                                   ("GET", f"/conversations/{cid}/export", None)):
            assert bob.call(method, path, json=body).status_code == 404, (method, path)
        assert alice.call("GET", f"/conversations/{cid}").json()["messages"][0]["content"] == "alice's secret"
        # the token of alice's session does not work with a session of its own
        assert bob.http.post("/conversations", json={}, headers={"X-CSRF-Token": alice.csrf}).status_code == 403
        alice.call("POST", "/logout")
        assert alice.call("GET", "/conversations").status_code == 401
    finally:
        web.stop()


def test_regenerate_keeps_versions_and_edit_branches_both_reachable_by_switching(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt="Version one.")
    first = client.events("POST", f"/conversations/{cid}/messages", json={"content": "q1", "model": ECHO})[-1][1]["reply"]
    client.call("PATCH", f"/conversations/{cid}", json={"system_prompt": "Version two."})
    second = client.events("POST", f"/conversations/{cid}/regenerate", json={"model": ECHO})[-1][1]["reply"]
    assert "one" in first["content"] and "two" in second["content"]
    assert second["versions"] == [first["id"], second["id"]]
    view = client.call("POST", f"/conversations/{cid}/switch", json={"message_id": first["id"]}).json()
    assert view["messages"][-1]["content"] == first["content"]  # < 1/2 >
    assert client.call("GET", f"/conversations/{cid}").json()["messages"][-1]["id"] == first["id"]  # kept

    question = view["messages"][0]
    events = client.events("POST", f"/conversations/{cid}/messages/{question['id']}/edit",
                           json={"content": "q1, edited", "model": ECHO})
    started, ended = events[0][1], events[-1][1]
    assert started["user_message"]["content"] == "q1, edited"
    assert started["user_message"]["versions"] == [question["id"], started["user_message"]["id"]]
    assert ended["reply"]["finish_reason"] in ("stop", "length")
    shown = client.call("GET", f"/conversations/{cid}").json()["messages"]
    assert [m["content"] for m in shown][0] == "q1, edited"
    back = client.call("POST", f"/conversations/{cid}/switch", json={"message_id": question["id"]}).json()
    assert [m["content"] for m in back["messages"]] == ["q1", first["content"]]
    assert client.call("POST", f"/conversations/{cid}/messages/{first['id']}/edit",
                       json={"content": "x", "model": ECHO}).status_code == 404  # a reply is not edited
    assert client.call("POST", f"/conversations/{cid}/switch", json={"message_id": 10**9}).status_code == 404


def test_continue_goes_on_with_a_reply_cut_at_its_token_limit(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt="One two three four five six seven eight nine ten.")
    cut = client.events("POST", f"/conversations/{cid}/messages",
                        json={"content": "count", "model": ECHO, "parameters": {"max_tokens": 3}})[-1][1]["reply"]
    assert cut["finish_reason"] == "length" and cut["content"]
    events = client.events("POST", f"/conversations/{cid}/continue", json={"model": ECHO})
    base = cut["content"].rstrip()  # the prompt ends at the text, and so does the reply continued
    assert events[0][1]["reply"]["content"] == base  # `started` carries the text continued
    added = "".join(d["text"] for n, d in events if n == "text")
    ended = events[-1][1]["reply"]
    assert ended["id"] == cut["id"] and ended["content"] == base + added and added
    assert ended["finish_reason"] in ("stop", "length") and ended["versions"] == [cut["id"]]
    assert client.call("GET", f"/conversations/{cid}").json()["messages"][-1]["content"] == ended["content"]
    empty = client.new_conversation()
    r = client.call("POST", f"/conversations/{empty}/continue", json={"model": ECHO})
    assert r.status_code == 400 and r.json()["error"]["code"] == "nothing_to_continue"


def test_an_anonymous_arena_round_hides_the_names_until_the_vote(cluster):
    controller, web, tmp = cluster
    two = start_worker(controller, names="echo-two", echo=True, delay_s=0.01)
    try:
        client = Client(web.url)
        r = client.call("POST", "/arena/battles", json={})
        assert r.status_code == 201, r.text
        battle = r.json()
        assert battle["anonymous"] and [s["model"] for s in battle["sides"]] == [None, None]
        events = client.events("POST", f"/arena/battles/{battle['id']}/messages", json={"content": "hello both"})
        assert {(name, data.get("side")) for name, data in events if name in ("started", "ended")} == {
            ("started", 0), ("started", 1), ("ended", 0), ("ended", 1)}
        assert all(data["data"]["reply"]["model"] is None for name, data in events if name in ("started", "ended"))
        assert "echo" not in json.dumps([d for n, d in events if n in ("started", "ended")])  # nothing gives them away
        assert events[-1] == ("turn", {"can_vote": True, "why_no_vote": None})
        texts = ["".join(d["data"]["text"] for n, d in events if n == "text" and d["side"] == side) for side in (0, 1)]
        assert all(texts)
        assert client.call("GET", f"/arena/battles/{battle['id']}").json()["sides"][0]["model"] is None
        side = battle["sides"][0]["conversation_id"]  # nor do the chat routes give the names away
        for path in (f"/conversations/{side}", f"/conversations/{side}/export", f"/conversations/{side}/reply"):
            assert client.call("GET", path).status_code == 404, path
        voted = client.call("POST", f"/arena/battles/{battle['id']}/vote", json={"kind": "model_a"}).json()
        assert voted["vote"] == "model_a" and {s["model"] for s in voted["sides"]} == {ECHO, "echo-two"}
        again = client.call("POST", f"/arena/battles/{battle['id']}/vote", json={"kind": "tie"})
        assert again.status_code == 409 and "voted" in again.json()["error"]["message"]
        assert client.call("POST", f"/arena/battles/{battle['id']}/messages",
                           json={"content": "more"}).status_code == 409
        db = Database(f"sqlite:///{tmp / 'local.db'}")
        with db.session() as s:
            from parley.store.models import Vote
            votes = s.query(Vote).all()
            assert [(v.kind, v.anony, v.conversation_a_id) for v in votes] == [
                ("model_a", True, voted["sides"][0]["conversation_id"])]
        db.close()
        assert client.call("GET", "/conversations").json()["conversations"] == [] or all(
            c["mode"] == "chat" for c in client.call("GET", "/conversations").json()["conversations"])

        named = client.call("POST", "/arena/battles", json={"models": [ECHO, "echo-two"]}).json()
        assert [s["model"] for s in named["sides"]] == [ECHO, "echo-two"] and not named["anonymous"]
        assert named["why_no_vote"] == "send a message first"
        r = client.call("POST", f"/arena/battles/{named['id']}/vote", json={"kind": "tie"})
        assert r.status_code == 409
        assert client.call("POST", "/arena/battles", json={"models": [ECHO, ECHO]}).status_code == 400
        assert client.call("POST", "/arena/battles", json={"models": [ECHO]}).status_code == 400
        assert client.call("GET", "/arena/battles/nope").status_code == 404
    finally:
        two.stop()


def test_a_round_side_by_side_of_up_to_four_models_is_not_voted_on(cluster):
    controller, web, _ = cluster
    extra = [start_worker(controller, names=name, echo=True) for name in ("echo-three", "echo-four")]
    try:
        client = Client(web.url)
        r = client.call("POST", "/arena/battles", json={"models": [ECHO, "echo-three", "echo-four"]})
        assert r.status_code == 201, r.text
        battle = r.json()
        events = client.events("POST", f"/arena/battles/{battle['id']}/messages", json={"content": "three at once"})
        assert sorted(d["side"] for n, d in events if n == "ended") == [0, 1, 2]
        assert events[-1][1] == {"can_vote": False, "why_no_vote": "votes are for two models side by side"}
        assert client.call("POST", "/arena/battles", json={"models": [ECHO, "a", "b", "c", "d"]}).status_code == 400
    finally:
        for worker in extra:
            worker.stop()


def test_the_leaderboard_rates_anonymous_votes_says_which_were_not_counted_and_shows_mt_bench(cluster, tmp_path):
    controller = cluster[0]
    mt = tmp_path / "mt_bench"
    (mt / "model_judgment").mkdir(parents=True)
    (mt / "question.jsonl").write_text("".join(json.dumps({"question_id": i, "category": c, "turns": ["q"]}) + "\n"
                                               for i, c in ((1, "writing"), (2, "math"), (3, "coding"))))
    (mt / "model_judgment" / "gpt-4_single.jsonl").write_text("".join(
        json.dumps({"model": m, "question_id": q, "turn": 1, "score": s}) + "\n"
        for m, scores in (("gpt-4", (9, 7, 8)), (ECHO, (2, 1, 3))) for q, s in zip((1, 2, 3), scores)))
    web = start_web(controller, f"sqlite:///{tmp_path / 'lb.db'}", "--leaderboard-file", str(tmp_path / "lb.json"),
                    "--mt-bench-judgments", str(mt / "model_judgment" / "gpt-4_single.jsonl"))
    two = start_worker(controller, names="echo-two", echo=True)
    try:
        client = Client(web.url)
        board = client.call("GET", "/leaderboard").json()
        assert board["status"].startswith("No Arena ratings yet") and board["can_recompute"]
        assert [(r["model"], r["mt_bench"], r["rating"]) for r in board["rows"]] == [("gpt-4", 8.0, None), (ECHO, 2.0, None)]
        assert board["mt_bench"]["categories"] == ["coding", "math", "writing"]
        assert board["mt_bench"]["scores"]["gpt-4"] == {"writing": 9.0, "math": 7.0, "coding": 8.0}
        wait_for_models(controller, [ECHO, "echo-two"])  # workers of earlier tests have left: a battle is these two
        for kind in ("model_a", "model_b", "tie", "model_a"):
            battle = client.call("POST", "/arena/battles", json={}).json()
            client.events("POST", f"/arena/battles/{battle['id']}/messages", json={"content": "hi"})
            assert client.call("POST", f"/arena/battles/{battle['id']}/vote", json={"kind": kind}).status_code == 200
        named = client.call("POST", "/arena/battles", json={"models": [ECHO, "echo-two"]}).json()
        client.events("POST", f"/arena/battles/{named['id']}/messages", json={"content": "hi"})
        client.call("POST", f"/arena/battles/{named['id']}/vote", json={"kind": "model_a"})
        board = client.call("POST", "/leaderboard/recompute").json()
        assert board["status"].startswith("Recomputed from 4 battles")
        rated = {r["model"]: r for r in board["rows"] if r["rank"] is not None}
        assert set(rated) == {ECHO, "echo-two"} and all(r["votes"] == 4 for r in rated.values())
        assert all(r["lower"] <= r["rating"] <= r["upper"] for r in rated.values())
        assert rated[ECHO]["mt_bench"] == 2.0 and board["not_counted"] == {"named (not anonymous) battle": 1}
        again = client.call("POST", "/leaderboard/recompute")
        assert again.status_code == 429 and "again in" in again.json()["error"]["message"]
    finally:
        two.stop()
        web.stop()


def test_a_reply_is_upvoted_downvoted_or_flagged_and_only_a_reply_of_ones_own(local):
    client = Client(local)
    cid = client.new_conversation()
    reply = client.events("POST", f"/conversations/{cid}/messages", json={"content": "rate me", "model": ECHO})[-1][1]
    reply_id = reply["reply"]["id"]
    for kind in ("upvote", "flag"):
        r = client.call("POST", f"/conversations/{cid}/messages/{reply_id}/feedback", json={"kind": kind})
        assert r.status_code == 201, r.text
    assert client.call("POST", f"/conversations/{cid}/messages/{reply_id}/feedback",
                       json={"kind": "love"}).status_code == 400
    question = client.call("GET", f"/conversations/{cid}").json()["messages"][0]["id"]
    assert client.call("POST", f"/conversations/{cid}/messages/{question}/feedback",
                       json={"kind": "upvote"}).status_code == 404
    stats = client.call("GET", "/leaderboard").json()["vote_stats"]  # the local user is an admin
    assert stats["feedback"]["upvote"] >= 1 and stats["feedback"]["flag"] >= 1


def test_two_sends_at_once_to_one_conversation_write_one_reply_and_refuse_the_other(local):
    client = Client(local)
    cid = client.new_conversation(system_prompt=" ".join(f"w{i}" for i in range(60)))
    results: list = [None, None]
    barrier = threading.Barrier(2)

    def send(i: int) -> None:
        barrier.wait()
        with client.http.stream("POST", f"/conversations/{cid}/messages", headers={"X-CSRF-Token": client.csrf},
                                json={"content": f"message {i}", "model": ECHO}) as r:
            results[i] = (r.status_code, parse_sse(r.iter_lines()) if r.status_code == 200 else r.read())

    threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(code for code, _ in results) == [200, 409], results
    stored = client.call("GET", f"/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[1]["finish_reason"] in ("stop", "length")


def test_an_anonymous_side_that_fails_does_not_name_its_model_in_the_error(cluster):
    controller, web, _ = cluster
    doomed = start_worker(controller, names="doomed-model", echo=True)
    client = Client(web.url)
    wait_for_models(controller, [ECHO, "doomed-model"])  # workers of earlier tests have left: a battle is these two
    battle = client.call("POST", "/arena/battles", json={}).json()
    doomed.kill()
    events = client.events("POST", f"/arena/battles/{battle['id']}/messages", json={"content": "hello"})
    errors = [d["data"]["reply"]["error"] for n, d in events if n == "ended" and d["data"]["reply"]["error"]]
    assert errors and "doomed" not in json.dumps(events)
    view = client.call("GET", f"/arena/battles/{battle['id']}").json()
    assert "doomed" not in json.dumps(view) and "failed to answer" in view["why_no_vote"]
