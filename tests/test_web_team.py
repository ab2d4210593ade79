"""Running the web UI for a team (`parley web --auth`), against real servers on 127.0.0.1: sign-up under each policy,
approval, sign-in (pending, disabled, rate-limited), sessions that end, password change and reset, admin rights,
API keys, usage and limits of web replies, and sign-in through a real OpenID Connect provider (panva's
oidc-provider, tests/oidc.py).

Three `parley web --auth` processes share one database, one per sign-up policy (closed, open, approval), beside a
controller and an echo worker (these tests are about accounts, not inference). Each test's browser sends its own
client address (X-Forwarded-For, which uvicorn takes from a proxy on 127.0.0.1), so the per-address sign-in limit
of one test does not spill into another's."""

from __future__ import annotations

import csv
import io
import json
import random
import time
from base64 import b64encode
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import itsdangerous
import pytest

from parley.store.accounts import Accounts
from parley.store.database import Database
from parley.store.usage import Usage
from parley.web.app import session_key
from parley.web.services import WebSettings
from tests.oidc import OIDCProvider, login_with_httpx, start_oidc_provider
from tests.servers import Server, free_port, start_controller, start_worker
from tests.test_web_api import Client as WebClient

SECRET = "web-team-test-cluster-secret-0123456"
ECHO, ECHO_B = "echo-model", "echo-model-b"
ADMIN, ADMIN_PASSWORD = "root", "root-password-1"
POLICIES = ("closed", "open", "approval")
IDP_NAME = "Test IdP"


class Client(WebClient):
    """A browser (test_web_api's), with a client address of its own."""

    def __init__(self, url: str, address: str | None = None):
        self.address = address or "10." + ".".join(str(random.randrange(256)) for _ in range(3))
        super().__init__(url, headers={"X-Forwarded-For": self.address})

    def session(self) -> dict:
        return self.http.get("/session").json()

    def signup(self, username: str, password: str) -> httpx.Response:
        r = self.call("POST", "/signup", json={"username": username, "password": password})
        if r.status_code == 201:
            self.csrf = r.json()["session"]["csrf_token"]
        return r

    def ask(self, conversation_id: str, content: str) -> list[tuple[str, dict]]:
        return self.events("POST", f"/conversations/{conversation_id}/messages", json={"content": content, "model": ECHO})


@dataclass
class Team:
    controller: Server
    db_url: str
    webs: dict[str, Server]  # by sign-up policy
    idp: OIDCProvider | None  # None: node or the provider's npm packages are missing
    admin: Client  # signed in as ADMIN on the approval server

    def url(self, policy: str = "approval") -> str:
        return self.webs[policy].url

    def user(self, username: str, password: str = "a-good-password", sign_in: bool = True,
             **change) -> tuple[int, Client | None]:
        """A new account (made by the admin; `change`: PATCHed after), signed in on the approval server."""
        r = self.admin.call("POST", "/admin/users", json={"username": username, "password": password})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        if change:
            assert self.admin.call("PATCH", f"/admin/users/{user_id}", json=change).status_code == 200
        if not sign_in:
            return user_id, None
        client = Client(self.url())
        assert client.login(username, password).status_code == 200
        return user_id, client


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web-team")
    db_url = f"sqlite:///{tmp / 'team.db'}"
    db = Database(db_url)
    db.upgrade()
    Accounts(db).create(ADMIN, ADMIN_PASSWORD, is_admin=True)
    db.close()
    with ExitStack() as stack:
        controller = start_controller(secret=SECRET)
        stack.callback(controller.stop)
        worker = start_worker(controller, names=f"{ECHO},{ECHO_B}", echo=True)
        stack.callback(worker.stop)
        ports = {policy: free_port() for policy in POLICIES}
        oidc_args: list[str] = []
        try:
            idp = stack.enter_context(start_oidc_provider(
                [f"http://127.0.0.1:{port}/api/oidc/callback" for port in ports.values()]))
            (tmp / "oidc-secret").write_text(idp.client_secret + "\n")
            oidc_args = ["--oidc-issuer", idp.issuer, "--oidc-client-id", idp.client_id,
                         "--oidc-client-secret-file", str(tmp / "oidc-secret"), "--oidc-name", IDP_NAME]
        except pytest.skip.Exception:  # no node: everything but the OpenID Connect tests
            idp = None
        webs = {policy: Server("web", "--controller-address", controller.url, "--db-url", db_url, "--auth",
                               "--signup", policy, *oidc_args, port=ports[policy], secret=SECRET)
                for policy in POLICIES}
        for web in webs.values():
            stack.callback(web.stop)
        for web in webs.values():
            web.wait_until(lambda w=web: httpx.get(w.url + "/health", timeout=1).status_code == 200, "web")
        admin = Client(webs["approval"].url)
        assert admin.login(ADMIN, ADMIN_PASSWORD).status_code == 200
        yield Team(controller=controller, db_url=db_url, webs=webs, idp=idp, admin=admin)


def error(r: httpx.Response) -> dict:
    return r.json()["error"]


def fresh_window(seconds: int, margin: float) -> None:
    """Wait, if need be, so that the next `margin` seconds fall in one counting window of `seconds`."""
    left = seconds - time.time() % seconds
    if left < margin:
        time.sleep(left + 0.05)


def test_the_session_says_how_one_may_sign_in(team):
    for policy in POLICIES:
        info = Client(team.url(policy)).session()
        assert info["signed_in"] is False and info["auth"] is True and info["signup"] == policy
        assert info["oidc"] == ({"name": IDP_NAME} if team.idp else None)
    info = team.admin.session()
    assert info["signed_in"] and info["username"] == ADMIN and info["is_admin"] and isinstance(info["user_id"], int)
    # Lax: the browser brings the session back from an OpenID Connect provider's page (CSRF is the header's job).
    assert "samesite=lax" in httpx.get(team.url() + "/api/session").headers["set-cookie"].lower()


def test_signup_closed_is_refused(team):
    client = Client(team.url("closed"))
    r = client.signup("closed-door", "a-good-password")
    assert r.status_code == 403 and error(r)["code"] == "signup_closed"
    assert client.login("closed-door", "a-good-password").status_code == 401  # no account was made


def test_open_signup_signs_in_at_once(team):
    client = Client(team.url("open"))
    r = client.signup("olivia", "olivias-password")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    assert r.json()["session"]["signed_in"] and r.json()["session"]["username"] == "olivia"
    assert client.session()["username"] == "olivia"
    assert client.call("GET", "/conversations").status_code == 200
    # what sign-up refuses, and why
    other = Client(team.url("open"))
    for name, password, why in (("olivia", "another-password", "taken"), ("x", "a-good-password", "username"),
                                ("bad name!", "a-good-password", "username"), ("oscar", "short", "password")):
        r = other.signup(name, password)
        assert r.status_code == 400 and why in error(r)["message"], (name, r.text)
    assert other.session()["signed_in"] is False


def test_approval_signup_waits_for_an_admin_and_disabling_signs_out(team):
    client = Client(team.url("approval"))
    r = client.signup("penny", "pennys-password")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending" and r.json()["session"]["signed_in"] is False
    assert client.call("GET", "/conversations").status_code == 401
    r = client.login("penny", "pennys-password")
    assert r.status_code == 403 and error(r)["code"] == "account_pending"
    assert "approval" in error(r)["message"]
    r = client.login("penny", "wrong-password")  # a wrong password learns nothing about the account
    assert r.status_code == 401 and error(r)["code"] == "bad_credentials"

    listed = {u["username"]: u for u in team.admin.call("GET", "/admin/users").json()}
    assert listed["penny"]["status"] == "pending" and listed["penny"]["sign_in"] == "password"
    r = team.admin.call("PATCH", f"/admin/users/{listed['penny']['id']}", json={"status": "active"})
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert client.login("penny", "pennys-password").status_code == 200
    assert client.call("GET", "/conversations").status_code == 200
    after = {u["username"]: u for u in team.admin.call("GET", "/admin/users").json()}["penny"]
    assert after["last_login_at"] is not None

    r = team.admin.call("PATCH", f"/admin/users/{listed['penny']['id']}", json={"status": "disabled"})
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = client.call("GET", "/conversations")  # the session signed in before is over
    assert r.status_code == 401 and error(r)["code"] == "not_signed_in"
    r = client.login("penny", "pennys-password")
    assert r.status_code == 403 and error(r)["code"] == "account_disabled"
    assert client.login("penny", "wrong-password").status_code == 401


def test_a_password_change_ends_the_other_sessions(team):
    _, laptop = team.user("quinn", "quinns-password")
    phone = Client(team.url("open"))  # another web process of the same team
    assert phone.login("quinn", "quinns-password").status_code == 200
    for current, new, why in (("wrong-password", "quinns-new-password", "current password"),
                              ("quinns-password", "short", "at least")):
        r = laptop.call("POST", "/account/password", json={"current_password": current, "new_password": new})
        assert r.status_code == 400 and why in error(r)["message"], r.text
    assert phone.call("GET", "/account").status_code == 200  # a refused change ends nothing
    r = laptop.call("POST", "/account/password", json={"current_password": "quinns-password",
                                                         "new_password": "quinns-new-password"})
    assert r.status_code == 204, r.text
    assert laptop.call("GET", "/account").json()["username"] == "quinn"  # the session that changed it goes on
    r = phone.call("GET", "/account")
    assert r.status_code == 401 and error(r)["code"] == "not_signed_in"
    assert phone.session()["signed_in"] is False
    assert phone.login("quinn", "quinns-password").status_code == 401
    assert phone.login("quinn", "quinns-new-password").status_code == 200


def test_an_admin_resets_a_password(team):
    user_id, client = team.user("rosa", "rosas-password")
    r = team.admin.call("POST", f"/admin/users/{user_id}/password", json={"password": "short"})
    assert r.status_code == 400
    r = team.admin.call("POST", f"/admin/users/{user_id}/password", json={"password": "rosas-reset-password"})
    assert r.status_code == 204
    assert client.call("GET", "/account").status_code == 401
    assert client.login("rosa", "rosas-password").status_code == 401
    assert client.login("rosa", "rosas-reset-password").status_code == 200
    assert team.admin.call("POST", "/admin/users/999999/password", json={"password": "whatever-1"}).status_code == 404


def test_admin_rights_are_granted_and_revoked_and_the_last_admin_stays(team):
    admins = [u for u in team.admin.call("GET", "/admin/users").json() if u["is_admin"] and u["status"] == "active"]
    assert [u["username"] for u in admins] == [ADMIN]  # no other test makes admins
    root_id = admins[0]["id"]
    r = team.admin.call("PATCH", f"/admin/users/{root_id}", json={"is_admin": False})
    assert r.status_code == 409 and error(r)["code"] == "last_admin"
    r = team.admin.call("PATCH", f"/admin/users/{root_id}", json={"status": "disabled"})
    assert r.status_code == 409 and error(r)["code"] == "last_admin"

    sam_id, sam = team.user("sam", "sams-password")
    assert error(sam.call("GET", "/admin/users"))["code"] == "admin_only"
    r = team.admin.call("PATCH", f"/admin/users/{sam_id}", json={"is_admin": True})
    assert r.status_code == 200 and r.json()["is_admin"] is True
    assert sam.call("GET", "/admin/users").status_code == 200  # at once, in the same session
    assert sam.session()["is_admin"] is True
    # sam takes root's rights away; then sam is the last admin
    assert sam.call("PATCH", f"/admin/users/{root_id}", json={"is_admin": False}).status_code == 200
    assert team.admin.call("GET", "/admin/users").status_code == 403
    r = sam.call("PATCH", f"/admin/users/{sam_id}", json={"is_admin": False})
    assert r.status_code == 409 and "last active admin" in error(r)["message"]
    assert sam.call("PATCH", f"/admin/users/{root_id}", json={"is_admin": True}).status_code == 200
    assert team.admin.call("PATCH", f"/admin/users/{sam_id}", json={"is_admin": False}).status_code == 200
    assert sam.call("GET", "/admin/users").status_code == 403
    assert team.admin.call("PATCH", "/admin/users/999999", json={"is_admin": False}).status_code == 404


def test_non_admins_get_403_on_every_admin_route(team):
    _, tina = team.user("tina", "tinas-password")
    anonymous = Client(team.url())
    for method, path, body in (("GET", "/admin/users", None),
                               ("POST", "/admin/users", {"username": "mallory", "password": "mallorys-password"}),
                               ("PATCH", "/admin/users/1", {"is_admin": True}),
                               ("POST", "/admin/users/1/password", {"password": "hijacked-password"}),
                               ("GET", "/admin/keys", None), ("DELETE", "/admin/keys/key_x", None),
                               ("GET", "/admin/usage", None), ("GET", "/admin/usage?format=csv", None)):
        r = tina.call(method, path, json=body)
        assert r.status_code == 403 and error(r)["code"] == "admin_only", (method, path, r.text)
        r = anonymous.call(method, path, json=body)
        assert r.status_code == 401 and error(r)["code"] == "not_signed_in", (method, path, r.text)
    assert tina.session()["is_admin"] is False
    assert ADMIN in [u["username"] for u in team.admin.call("GET", "/admin/users").json()]
    assert "mallory" not in [u["username"] for u in team.admin.call("GET", "/admin/users").json()]


def test_sign_in_attempts_are_limited_per_username_and_per_address(team):
    team.user("uma", "umas-password", sign_in=False)
    fresh_window(15 * 60, margin=30)
    answers = {}
    guesser = Client(team.url())
    for username in ("uma", "nobody-at-all"):
        for attempt in range(10):
            r = guesser.login(username, f"wrong-{attempt}")
            assert r.status_code == 401 and error(r)["message"] == "wrong username or password", r.text
        r = guesser.login(username, "umas-password")  # the 11th: even the right password waits
        assert r.status_code == 429 and error(r)["code"] == "too_many_attempts", r.text
        assert 0 < int(r.headers["Retry-After"]) <= 15 * 60
        answers[username] = (r.status_code, error(r)["code"], error(r)["message"].split(" in ")[0])
        r = Client(team.url("open")).login(username, "umas-password")  # from elsewhere, on another web process
        assert r.status_code == 429
    assert answers["uma"] == answers["nobody-at-all"]  # nothing says which username exists
    # One address trying many usernames: its 50 attempts so far (22) and more, then 429 for any username.
    for _ in range(28):
        assert guesser.login("uma", "wrong-password").status_code == 429
    r = guesser.login("fresh-name", "wrong-password")
    assert r.status_code == 429 and error(r)["code"] == "too_many_attempts" and "Retry-After" in r.headers
    assert Client(team.url()).login("fresh-name", "wrong-password").status_code == 401  # another address may try


def test_a_session_older_than_its_hours_is_over(team):
    user_id, _ = team.user("vera", "veras-password")
    signer = itsdangerous.TimestampSigner(session_key(WebSettings(cluster_secret=SECRET)))

    def browser_signed_in_at(at: float) -> Client:
        session = {"user_id": user_id, "session_version": 0, "signed_in_at": int(at), "csrf": "token"}
        cookie = signer.sign(b64encode(json.dumps(session).encode())).decode()
        client = Client(team.url())
        client.http.cookies.set("parley_session", cookie)
        return client

    assert browser_signed_in_at(time.time() - 3600).session()["username"] == "vera"
    old = browser_signed_in_at(time.time() - 15 * 86400)  # the default is 14 days
    assert old.session()["signed_in"] is False
    r = old.http.get("/conversations")
    assert r.status_code == 401 and error(r)["code"] == "not_signed_in"
    r = Client(team.url()).http.post("/logout", headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403  # signing out needs the session's token too


def test_keys_are_shown_once_listed_by_prefix_and_revoked(team):
    wes_id, wes = team.user("wes", "wess-password")
    _, xena = team.user("xena", "xenas-password")
    r = wes.call("POST", "/account/keys", json={"name": "laptop", "rpm": 60, "models": [ECHO]})
    assert r.status_code == 201, r.text
    made = r.json()
    secret, key = made["secret"], made["key"]
    assert secret.startswith("sk-parley-") and len(secret) > 40
    assert key["name"] == "laptop" and key["owner"] == "wes" and key["limits"]["rpm"] == 60
    assert key["models"] == [ECHO]
    assert secret.startswith(key["prefix"].rstrip("…")) and len(key["prefix"]) < 20
    listed = wes.call("GET", "/account/keys")
    assert [k["id"] for k in listed.json()] == [key["id"]]
    assert secret not in listed.text and "secret" not in listed.json()[0]
    assert wes.call("POST", "/account/keys", json={"name": ""}).status_code == 400
    assert wes.call("POST", "/account/keys", json={"name": "k", "owner": "someone"}).status_code == 400

    assert xena.call("GET", "/account/keys").json() == []
    r = xena.call("DELETE", f"/account/keys/{key['id']}")  # not hers
    assert r.status_code == 404 and wes.call("GET", "/account/keys").json()[0]["revoked_at"] is None
    r = wes.call("DELETE", f"/account/keys/{key['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert wes.call("GET", "/account/keys").json()[0]["revoked_at"] is not None

    second = wes.call("POST", "/account/keys", json={"name": "server"}).json()["key"]
    everyone = team.admin.call("GET", "/admin/keys").json()
    assert {(k["id"], k["owner"], k["user_id"]) for k in everyone} >= {(key["id"], "wes", wes_id),
                                                                        (second["id"], "wes", wes_id)}
    r = team.admin.call("DELETE", f"/admin/keys/{second['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert team.admin.call("DELETE", "/admin/keys/key_nonexistent").status_code == 404


def _usage(client: Client, path: str, expect, timeout: float = 15) -> list[dict]:
    """The usage rows once `expect(rows)` holds (the web process writes usage in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.call("GET", path)
        assert r.status_code == 200, r.text
        if expect(r.json()) or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.2)


def test_a_web_reply_is_recorded_as_usage_with_the_tokens_it_stored(team):
    user_id, yara = team.user("yara", "yaras-password")
    cid = yara.new_conversation()
    replies = [yara.ask(cid, question)[-1][1]["reply"] for question in ("how deep is the sea", "and the lake")]
    assert all(r["finish_reason"] in ("stop", "length") and r["prompt_tokens"] > 0 for r in replies)
    prompt, completion = sum(r["prompt_tokens"] for r in replies), sum(r["completion_tokens"] for r in replies)

    rows = _usage(yara, "/account/usage?by=model", lambda rows: rows and rows[0]["requests"] == 2)
    assert len(rows) == 1, rows
    assert rows[0]["model"] == ECHO and rows[0]["requests"] == 2 and rows[0]["errors"] == 0
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (prompt, completion)
    assert rows[0]["total_tokens"] == prompt + completion and rows[0]["user"] is None
    today = datetime.now(timezone.utc).date().isoformat()
    by_day = yara.call("GET", f"/account/usage?by=day&since={today}&until={today}").json()
    assert [(r["day"], r["requests"]) for r in by_day] == [(today, 2)]
    assert yara.call("GET", "/account/usage?by=model&since=2000-01-01&until=2000-01-02").json() == []
    r = yara.call("GET", "/account/usage?by=colour")
    assert r.status_code == 400 and error(r)["param"] == "by"
    account = yara.call("GET", "/account").json()
    assert account["id"] == user_id and account["username"] == "yara" and account["limits"]["rpm"] is None

    # the admin sees everyone's, grouped by user, model and day, and as CSV
    rows = team.admin.call("GET", "/admin/usage?by=user,model,day").json()
    mine = [r for r in rows if r["user"] == "yara"]
    assert [(r["model"], r["day"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in mine] == [
        (ECHO, today, 2, prompt, completion)]
    only = team.admin.call("GET", f"/admin/usage?by=user&user_id={user_id}").json()
    assert [(r["user"], r["total_tokens"]) for r in only] == [("yara", prompt + completion)]
    r = team.admin.call("GET", "/admin/usage?by=user,model&format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == "attachment; filename=parley-usage.csv"
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert {k: v for k, v in next(row for row in table if row["user"] == "yara").items() if k != "mean_latency_ms"} == {
        "user": "yara", "model": ECHO, "requests": "2", "prompt_tokens": str(prompt),
        "completion_tokens": str(completion), "total_tokens": str(prompt + completion), "errors": "0"}
    r = yara.call("GET", "/account/usage?by=model&format=csv")
    assert r.headers["content-disposition"] == "attachment; filename=parley-usage.csv"
    assert r.text.splitlines()[0].startswith("model,requests")


def test_a_user_over_their_requests_per_minute_gets_429_and_nothing_is_stored(team):
    _, zoe = team.user("zoe", "zoes-password", limits={"rpm": 1})
    assert zoe.call("GET", "/account").json()["limits"]["rpm"] == 1
    cid = zoe.new_conversation()
    battle = zoe.call("POST", "/arena/battles", json={"models": [ECHO, ECHO_B]}).json()["id"]
    fresh_window(60, margin=10)
    assert zoe.ask(cid, "first question")[-1][0] == "ended"
    r = zoe.call("POST", f"/conversations/{cid}/messages", json={"content": "second question", "model": ECHO})
    assert r.status_code == 429, r.text
    assert error(r)["code"] == "rate_limit_exceeded" and error(r)["type"] == "requests"
    assert "1 requests per minute" in error(r)["message"] and 1 <= int(r.headers["Retry-After"]) <= 60
    stored = zoe.call("GET", f"/conversations/{cid}").json()["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == ["first question"]
    assert zoe.call("GET", "/account").json()["used"]["requests_this_minute"] == 1
    # an Arena round counts against the same limit, and nothing of it is stored either
    r = zoe.call("POST", f"/arena/battles/{battle}/messages", json={"content": "which is better"})
    assert r.status_code == 429 and error(r)["code"] == "rate_limit_exceeded"
    assert all(side["messages"] == [] for side in zoe.call("GET", f"/arena/battles/{battle}").json()["sides"])
    rows = _usage(zoe, "/account/usage?by=", lambda rows: rows and rows[0]["requests"] == 3)
    assert (rows[0]["requests"], rows[0]["errors"]) == (3, 2)  # the refusals are recorded (status 429)


def _login_error(response: httpx.Response) -> str | None:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith("/app/"), location
    return parse_qs(urlsplit(location).query).get("login_error", [None])[0]


def test_oidc_sign_in_makes_an_account_with_open_sign_up(team):
    if team.idp is None:
        pytest.skip("no OpenID Connect provider (node and tests/oidc_provider's npm packages)")
    browser = httpx.Client(timeout=30)
    r = browser.get(team.url("open") + "/api/oidc/login")
    assert r.status_code == 302 and r.headers["location"].startswith(team.idp.issuer)
    callback = login_with_httpx(browser, team.url("open") + "/api/oidc/login", "carol")
    assert _login_error(callback) is None
    info = browser.get(team.url("open") + "/api/session").json()
    assert info["signed_in"] and info["username"] == "carol" and info["is_admin"] is False
    assert browser.get(team.url("open") + "/api/conversations").status_code == 200
    carol = {u["username"]: u for u in team.admin.call("GET", "/admin/users").json()}["carol"]
    assert carol["sign_in"] == "oidc" and carol["status"] == "active" and carol["last_login_at"]
    # An account that exists signs in even where sign-up is closed; a new identity does not get one there.
    with httpx.Client(timeout=30) as again:
        assert _login_error(login_with_httpx(again, team.url("closed") + "/api/oidc/login", "carol")) is None
        assert again.get(team.url("closed") + "/api/session").json()["user_id"] == carol["id"]
    with httpx.Client(timeout=30) as stranger:
        why = _login_error(login_with_httpx(stranger, team.url("closed") + "/api/oidc/login", "erin"))
        assert why and "sign-up is closed" in why
        assert stranger.get(team.url("closed") + "/api/session").json()["signed_in"] is False
    # A callback that the provider did not send (a forged or stale state) signs no one in.
    with httpx.Client(timeout=30) as forger:
        why = _login_error(forger.get(team.url("open") + "/api/oidc/callback?code=abc&state=forged"))
        assert why and "failed" in why
        assert forger.get(team.url("open") + "/api/session").json()["signed_in"] is False


def test_oidc_sign_in_with_approval_waits_for_an_admin(team):
    if team.idp is None:
        pytest.skip("no OpenID Connect provider (node and tests/oidc_provider's npm packages)")
    browser = httpx.Client(timeout=30)
    start = team.url("approval") + "/api/oidc/login"
    assert _login_error(login_with_httpx(browser, start, "dave")) == "your account awaits an admin's approval"
    assert browser.get(team.url("approval") + "/api/session").json()["signed_in"] is False
    dave = {u["username"]: u for u in team.admin.call("GET", "/admin/users").json()}["dave"]
    assert dave["status"] == "pending" and dave["sign_in"] == "oidc"
    assert team.admin.call("PATCH", f"/admin/users/{dave['id']}", json={"status": "active"}).status_code == 200
    assert _login_error(login_with_httpx(browser, start, "dave")) is None  # the provider remembers dave
    assert browser.get(team.url("approval") + "/api/session").json()["username"] == "dave"


def test_without_auth_the_local_user_is_the_admin_and_usage_queued_at_shutdown_is_written(team):
    web = Server("web", "--controller-address", team.controller.url, "--db-url", team.db_url, secret=SECRET)
    try:
        web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web")
        local = Client(web.url)
        info = local.session()
        assert info["signed_in"] and info["username"] == "local" and info["signup"] == "closed" and info["oidc"] is None
        assert local.call("GET", "/account").json()["username"] == "local"
        assert ADMIN in [u["username"] for u in local.call("GET", "/admin/users").json()]
        r = local.signup("someone", "a-good-password")
        assert r.status_code == 400 and error(r)["code"] == "no_auth"
        assert error(local.http.get("/oidc/login"))["code"] == "oidc_not_configured"
        assert local.ask(local.new_conversation(), "one question")[-1][0] == "ended"
    finally:
        assert web.stop() == 0, web.log()  # at once: the reply's usage is still queued to be written
    db = Database(team.db_url)
    try:
        rows = Usage(db).summary(["user"])
    finally:
        db.close()
    assert [(r.user, r.requests) for r in rows if r.user == "local"] == [("local", 1)]


def test_parley_web_refuses_settings_that_cannot_work_and_reads_the_oidc_secret_safely(monkeypatch, capsys, tmp_path):
    from parley.cli import build_parser, main
    from parley.cli.web_cmd import oidc_settings

    monkeypatch.delenv("PARLEY_OIDC_CLIENT_SECRET", raising=False)
    oidc = ["--oidc-issuer", "https://idp.example.test/realms/team", "--oidc-client-id", "parley"]
    for args, why in ((["--signup", "open"], "--signup needs --auth"),
                      (oidc, "--oidc-issuer needs --auth"),
                      (["--auth", *oidc], "--oidc-client-secret-file or $PARLEY_OIDC_CLIENT_SECRET"),
                      (["--auth", *oidc, "--oidc-client-secret-file", str(tmp_path / "absent")], "cannot read"),
                      (["--auth", "--oidc-issuer", "idp.example.test", "--oidc-client-id", "parley"], "is a URL")):
        assert main(["web", *args]) != 0, args
        assert why in capsys.readouterr().err, args
    monkeypatch.setenv("PARLEY_OIDC_CLIENT_SECRET", "from-the-environment")
    settings = oidc_settings(build_parser().parse_args(["web", "--auth", *oidc, "--oidc-name", "Keycloak"]))
    assert (settings.client_secret, settings.name, settings.scopes) == ("from-the-environment", "Keycloak",
                                                                        "openid profile email")
    assert "from-the-environment" not in repr(settings)
