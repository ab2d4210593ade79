"""Running parley for a team, in a real browser (Playwright driving Debian's headless Chromium) against `parley web
--auth` on 127.0.0.1 with an echo worker: sign-up under each policy (closed, open, approval), an admin approving,
disabling, resetting a password and setting limits on the Admin page, a password changed on the Account page, an
API key made there (its secret shown once, and the real one), the usage of a reply just made, and sign-in through a
real OpenID Connect provider (tests/oidc.py). Screenshots of the Account and Admin pages go to
test-artifacts/screens/."""

from __future__ import annotations

import csv
import io
import re

import httpx
import pytest

from parley.store.accounts import Accounts
from parley.store.api_keys import KEY_PREFIX, ApiKeys
from parley.store.database import Database
from parley.store.models import Message
from tests.browser import CHROMIUM, SHOTS, browser, wait_until  # noqa: F401 - the browser fixture
from tests.oidc import start_oidc_provider
from tests.servers import Server, free_port, start_controller, start_worker
from tests.test_web_api import Client
from tests.test_web_app import AXE, axe_violations, open_app, pick, send, wait_done

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
SECRET = "web-team-browser-cluster-secret-01"
ADMIN, ADMIN_PASSWORD = "root-admin", "admin-password-1"
LOGIN = "form[aria-labelledby=login-title]"
SIGNUP = "form[aria-labelledby=signup-title]"


@pytest.fixture(scope="module")
def cluster():
    controller = start_controller(secret=SECRET)
    echo = start_worker(controller, names="echo-model", echo=True, delay_s=0.005)
    yield controller
    echo.stop()
    controller.stop()


def new_db(tmp_path) -> str:
    """A database with one admin in it (as `parley db create-user --admin` makes)."""
    db_url = f"sqlite:///{tmp_path / 'team.db'}"
    db = Database(db_url)
    db.upgrade()
    Accounts(db).create(ADMIN, ADMIN_PASSWORD, is_admin=True)
    db.close()
    return db_url


def start_team_web(controller: Server, db_url: str, *extra: str, port: int | None = None,
                   env: dict | None = None) -> Server:
    web = Server("web", "--controller-address", controller.url, "--db-url", db_url, "--auth", *extra, port=port,
                 env=env, secret=controller.secret)
    return web.wait_until(lambda: httpx.get(web.url + "/health", timeout=1).status_code == 200, "web")


class Team:
    """`parley web --auth --signup approval`, with sign-in through a real OpenID Connect provider too."""

    def __init__(self, web: Server, db_url: str):
        self.url, self.db_url = web.url, db_url


@pytest.fixture(scope="module")
def team(cluster, tmp_path_factory):
    db_url = new_db(tmp_path_factory.mktemp("web-team"))
    port = free_port()
    with start_oidc_provider([f"http://127.0.0.1:{port}/api/oidc/callback"]) as idp:
        web = start_team_web(cluster, db_url, "--signup", "approval", "--oidc-issuer", idp.issuer,
                             "--oidc-client-id", idp.client_id, "--oidc-name", "Test IdP", port=port,
                             env={"PARLEY_OIDC_CLIENT_SECRET": idp.client_secret})
        yield Team(web, db_url)
        web.stop()


def sign_in(page, username: str, password: str) -> None:
    page.wait_for_selector(LOGIN)
    page.fill(f"{LOGIN} input[name=username]", username)
    page.fill(f"{LOGIN} input[name=password]", password)
    page.click(f"{LOGIN} button[type=submit]")


def signed_in(page, username: str) -> None:
    page.wait_for_selector(f".sidebar-bottom:has-text('Signed in as {username}')")


def sign_out(page) -> None:
    page.click(".sidebar-bottom button:has-text('Sign out')")
    page.wait_for_selector(LOGIN)


def sign_up(page, username: str, password: str, repeat: str | None = None) -> None:
    page.click(f"{LOGIN} button:has-text('Create an account')")
    page.fill(f"{SIGNUP} input[name=username]", username)
    page.fill(f"{SIGNUP} input[name=password]", password)
    page.fill(f"{SIGNUP} input[name=repeat_password]", password if repeat is None else repeat)
    page.click(f"{SIGNUP} button[type=submit]")


def through_provider(page, login: str, username: str) -> None:
    """Press "Sign in with Test IdP", sign in at the OpenID Connect provider's own pages (its login form, then its
    consent page, when it shows them) until parley's app is back: signed in, or saying why not."""
    signed = f".sidebar-bottom:has-text('Signed in as {username}')"
    with page.expect_navigation():  # away from this page: what it says is not the answer
        page.click(f"{LOGIN} a:has-text('Sign in with Test IdP')")
    for _ in range(6):
        page.wait_for_selector(f"input[name=login], button:has-text('Continue'), {signed}, {LOGIN} p.error")
        if page.locator("input[name=login]").count():
            page.fill("input[name=login]", login)
            page.fill("input[name=password]", "any non-empty password")
            page.click("button:has-text('Sign-in')")
        elif page.locator("button:has-text('Continue')").count():
            page.click("button:has-text('Continue')")
        else:
            return
    raise AssertionError(f"the provider's pages went on and on: {page.url}")


def open_page(page, name: str, ready: str) -> None:
    """Go to the Account or Admin page through its link in the sidebar."""
    page.click(f"nav[aria-label='Your account'] a:has-text('{name}')")
    page.wait_for_selector(ready)


def screenshot(page, name: str) -> None:
    """The whole of a page that scrolls inside its own section (full_page sees only the window)."""
    height = page.evaluate("document.querySelector('section.manage').scrollHeight") + 60
    page.set_viewport_size({"width": 1400, "height": max(1000, height)})
    page.screenshot(path=str(SHOTS / name))
    page.set_viewport_size({"width": 1400, "height": 1000})


def wait_for_usage(page, model: str) -> None:
    """Until the usage table has a row of `model` (the usage writer stores a reply's off the request path)."""
    def shown() -> bool:
        if page.locator(f"table.usage tbody tr:has-text('{model}')").count():
            return True
        page.click("button:has-text('Refresh')")
        page.wait_for_timeout(200)
        return False

    wait_until(shown, f"no usage of {model} showed", 20)


def as_admin(browser, url: str):
    page = open_app(browser, url)
    sign_in(page, ADMIN, ADMIN_PASSWORD)
    signed_in(page, ADMIN)
    open_page(page, "Admin", f"tr[data-user={ADMIN}]")
    return page


def test_closed_sign_up_offers_no_form(cluster, browser, tmp_path):
    web = start_team_web(cluster, new_db(tmp_path))
    try:
        page = open_app(browser, web.url)
        page.wait_for_selector(LOGIN)
        assert page.locator("button:has-text('Create an account')").count() == 0
        assert page.locator("a:has-text('Sign in with')").count() == 0  # no OpenID Connect provider set up
        refused = Client(web.url).call("POST", "/signup", json={"username": "mallory", "password": "long-password-1"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "signup_closed"
        sign_in(page, "nobody-here", "wrong-password")
        page.wait_for_selector(f"{LOGIN} p.error:has-text('wrong username or password')")
        guesser = Client(web.url)  # someone guessing: past ten tries at one name, sign-in waits, and says how long
        while guesser.login("nobody-here", "another-guess").status_code != 429:
            pass
        sign_in(page, "nobody-here", "wrong-password")
        page.wait_for_selector(f"{LOGIN} p.error:has-text('Too many sign-in attempts: try again in')")
        said = page.inner_text(f"{LOGIN} p.error")  # the wait runs to the end of the counting window
        assert re.search(r"try again in \d+ (second|minute|hour)s?", said), said
        assert page.errors == []
    finally:
        web.stop()


def test_open_sign_up_signs_in_at_once_and_the_admin_page_stays_hidden(cluster, browser, tmp_path):
    web = start_team_web(cluster, new_db(tmp_path), "--signup", "open")
    try:
        page = open_app(browser, web.url)
        page.wait_for_selector(LOGIN)
        sign_up(page, "newcomer", "newcomer-pass-1", repeat="newcomer-pass-2")
        page.wait_for_selector(f"{SIGNUP} p.error:has-text('The two passwords differ')")
        page.fill(f"{SIGNUP} input[name=repeat_password]", "newcomer-pass-1")
        page.click(f"{SIGNUP} button[type=submit]")
        signed_in(page, "newcomer")
        assert page.locator("nav[aria-label='Your account'] a").all_inner_texts() == ["Account"]  # no Admin link
        page.goto(web.url + "/app/#/admin")
        page.wait_for_selector("p.error:has-text('This page is for admins')")
        page.click("nav[aria-label=Pages] a:has-text('Chat')")
        pick(page, "echo-model")
        send(page, "hello from a new account")
        assert wait_done(page, 1)

        page = open_app(browser, web.url)  # a second sign-up of the same name is refused, and says why
        sign_up(page, "newcomer", "another-pass-1")
        page.wait_for_selector(f"{SIGNUP} p.error:has-text(\"the username 'newcomer' is taken\")")
        assert page.locator(".sidebar-bottom").count() == 0
        assert page.errors == []
    finally:
        web.stop()


def test_sign_up_awaits_approval_then_the_admin_approves_disables_and_resets(team, browser):
    user = open_app(browser, team.url)
    sign_up(user, "pat", "pat-password-1")
    user.wait_for_selector(f"{LOGIN} p.note:has-text(\"awaits an admin's approval\")")
    sign_in(user, "pat", "pat-password-1")
    user.wait_for_selector(f"{LOGIN} p.error:has-text(\"awaits an admin's approval\")")

    admin = as_admin(browser, team.url)
    pending = admin.locator("section.pending li[data-user=pat]")
    assert "Pending approvals (1)" in admin.inner_text("section.pending h2")
    assert admin.inner_text("tr[data-user=pat] td >> nth=0") == "Awaits approval"
    pending.locator("button:has-text('Approve')").click()
    admin.wait_for_selector("p.done:has-text('pat can sign in now')")
    assert admin.locator("section.pending").count() == 0  # nobody else waits
    assert admin.inner_text("tr[data-user=pat] td >> nth=0") == "Active"

    sign_in(user, "pat", "pat-password-1")
    signed_in(user, "pat")
    sign_out(user)

    admin.click("tr[data-user=pat] button:has-text('Disable')")
    admin.wait_for_selector("tr[data-user=pat] td:has-text('Disabled')")
    sign_in(user, "pat", "pat-password-1")
    user.wait_for_selector(f"{LOGIN} p.error:has-text('This account is disabled')")
    admin.click("tr[data-user=pat] button:has-text('Enable')")
    admin.wait_for_selector("tr[data-user=pat] td:has-text('Active')")

    admin.click("tr[data-user=pat] button:has-text('Reset password')")
    admin.fill("input[name=reset_password]", "short")
    admin.click("form.inline-form button:has-text('Set password')")
    admin.wait_for_selector("tr.editing p.error:has-text('at least 8 characters')")
    admin.fill("input[name=reset_password]", "pat-new-password-2")
    admin.click("form.inline-form button:has-text('Set password')")
    admin.wait_for_selector("p.done:has-text(\"pat's password is reset\")")

    admin.click("tr[data-user=pat] button:has-text('Limits')")
    admin.fill("tr.editing input[name=rpm]", "30")
    admin.fill("tr.editing input[name=token_budget]", "50000")
    admin.select_option("tr.editing select[name=budget_period]", "day")
    admin.click("tr.editing button:has-text('Save limits')")
    admin.wait_for_selector("tr[data-user=pat] td:has-text('30 requests/min · 50,000 tokens/day')")
    admin.click("tr[data-user=pat] button:has-text('Make admin')")
    admin.wait_for_selector("tr[data-user=pat] td:has-text('Admin')")
    admin.click("tr[data-user=pat] button:has-text('Remove admin')")
    admin.wait_for_selector("tr[data-user=pat] button:has-text('Make admin')")

    admin.fill("input[name=new_username]", "quinn")
    admin.fill("input[name=new_user_password]", "quinn-password-1")
    admin.click("form.new-account button[type=submit]")
    admin.wait_for_selector("tr[data-user=quinn] td:has-text('Active')")
    admin.reload()  # what the page shows is what the server keeps
    admin.wait_for_selector("tr[data-user=pat] td:has-text('30 requests/min · 50,000 tokens/day')")
    assert admin.locator("tr[data-user=quinn]").count() == 1

    sign_in(user, "pat", "pat-password-1")  # the old password no longer works
    user.wait_for_selector(f"{LOGIN} p.error:has-text('wrong username or password')")
    sign_in(user, "pat", "pat-new-password-2")
    signed_in(user, "pat")
    open_page(user, "Account", "#my-limits")
    assert "30 requests/min · 50,000 tokens/day" in user.inner_text("#my-limits")
    assert user.errors == [] and admin.errors == []


def test_a_password_changed_on_the_account_page_is_the_one_that_signs_in(team, browser):
    db = Database(team.db_url)
    Accounts(db).create("robin", "robin-password-1")
    db.close()
    page = open_app(browser, team.url)
    sign_in(page, "robin", "robin-password-1")
    signed_in(page, "robin")
    open_page(page, "Account", "form.password-form")
    form = "form.password-form"
    page.fill(f"{form} input[name=current_password]", "not-my-password")
    page.fill(f"{form} input[name=new_password]", "robin-password-2")
    page.fill(f"{form} input[name=repeat_password]", "robin-password-2")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"{form} p.error[role=alert]")  # the server's word: the current password is wrong
    page.fill(f"{form} input[name=current_password]", "robin-password-1")
    page.fill(f"{form} input[name=repeat_password]", "robin-password-3")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"{form} p.error:has-text('The two passwords differ')")
    page.fill(f"{form} input[name=repeat_password]", "robin-password-2")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"{form} p[role=status]:has-text('Your password is changed')")
    page.reload()  # this session goes on
    page.wait_for_selector("#my-limits")
    page.click("section.account button:has-text('Sign out')")

    sign_in(page, "robin", "robin-password-1")
    page.wait_for_selector(f"{LOGIN} p.error:has-text('wrong username or password')")
    sign_in(page, "robin", "robin-password-2")
    signed_in(page, "robin")
    assert page.errors == []


def test_an_admin_makes_a_key_sees_its_secret_once_and_the_usage_of_a_reply(team, browser):
    page = open_app(browser, team.url)
    sign_in(page, ADMIN, ADMIN_PASSWORD)
    signed_in(page, ADMIN)
    pick(page, "echo-model")
    send(page, "count my tokens, please")
    assert wait_done(page, 1)

    open_page(page, "Account", "button:has-text('+ New key')")
    page.click("button:has-text('+ New key')")
    page.fill("input[name=key_name]", "ci-pipeline")
    page.fill("form.key-form input[name=rpm]", "0")
    page.click("form.key-form button[type=submit]")  # the browser says what is wrong, and nothing is sent
    assert page.locator("form.key-form input[name=rpm]:invalid").count() == 1
    page.fill("form.key-form input[name=rpm]", "60")
    page.check("input[name=key_models][value=some]")
    page.click("form.key-form button[type=submit]")
    page.wait_for_selector("form.key-form p.error:has-text('Pick the models')")
    page.check("form.key-form .model-choices label:has-text('echo-model') input")
    page.click("form.key-form button[type=submit]")
    page.wait_for_selector("#new-secret")
    secret = page.inner_text("#new-secret").strip()
    assert secret.startswith(KEY_PREFIX) and "shown only this once" in page.inner_text(".secret")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click(".secret button:has-text('Copy')")
    page.wait_for_selector(".secret button:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    db = Database(team.db_url)
    keys = ApiKeys(db)
    grant = keys.grant(secret)  # what was shown is the key itself
    assert grant and grant.username == ADMIN and grant.models == {"echo-model"} and grant.key_limits.rpm == 60
    row = page.locator("table.keys tbody tr:has-text('ci-pipeline')")
    assert secret[:16] in row.inner_text() and "60 requests/min" in row.inner_text()
    assert secret not in row.inner_text()
    wait_for_usage(page, "echo-model")  # my own usage, by model and day
    cells = page.locator("table.usage tbody tr:has-text('echo-model') td").all_inner_texts()
    assert cells[1:3] == ["echo-model", "1"], cells
    screenshot(page, "app-account.png")
    if AXE.exists():
        assert axe_violations(page) == []

    page.click(".secret button:has-text('Done')")
    assert page.locator("#new-secret").count() == 0
    page.reload()
    page.wait_for_selector("table.keys tbody tr:has-text('ci-pipeline')")
    assert secret not in page.content()  # shown once: never again

    # The reply made above, in the Admin page's usage, as many tokens as the reply reported.
    reply = [m for m in _messages(db) if m.role == "assistant" and m.model == "echo-model"][-1]
    open_page(page, "Admin", f"tr[data-user={ADMIN}]")
    wait_for_usage(page, "echo-model")
    cells = page.locator("table.usage tbody tr:has-text('echo-model') td").all_inner_texts()
    day, user, model, requests, prompt, completion, total = cells[:7]
    assert (user, model, requests) == (ADMIN, "echo-model", "1"), cells
    assert int(completion) == reply.completion_tokens and int(total) == int(prompt) + int(completion)
    assert page.locator("figure.usage-chart svg rect").count() >= 1
    csv_url = page.get_attribute("a:has-text('Download CSV')", "href")
    rows = list(csv.DictReader(io.StringIO(page.request.get(team.url + csv_url).text())))
    assert {(r["user"], r["model"], r["requests"]) for r in rows} >= {(ADMIN, "echo-model", "1")}

    page.uncheck("input[name=by-user]")  # grouped by model and day only: the table follows
    page.wait_for_selector("table.usage thead th:has-text('Model')")
    wait_until(lambda: page.locator("table.usage thead th:has-text('User')").count() == 0, "the User column stays")
    screenshot(page, "app-admin.png")
    if AXE.exists():
        assert axe_violations(page) == []
        page.select_option("select[aria-label=Theme]", "dark")
        assert axe_violations(page) == []
        open_page(page, "Account", "table.keys")
        assert axe_violations(page) == []
        page.select_option("select[aria-label=Theme]", "light")

    # Everyone's keys on the Admin page; revoking asks once more, then the key stops working.
    open_page(page, "Admin", "table.keys")
    key_row = page.locator("table.keys tbody tr:has-text('ci-pipeline')")
    assert ADMIN in key_row.inner_text()
    key_row.locator("button:has-text('Revoke')").click()
    key_row.locator("button:has-text('Revoke now')").click()
    page.wait_for_selector("table.keys tbody tr.revoked:has-text('ci-pipeline')")
    assert keys.grant(secret) is None
    db.close()
    assert page.errors == []


def _messages(db: Database) -> list[Message]:
    with db.session() as s:
        return s.query(Message).order_by(Message.id).all()


def test_sign_in_through_the_openid_connect_provider_with_approval(team, browser):
    page = open_app(browser, team.url)
    page.wait_for_selector(f"{LOGIN} a:has-text('Sign in with Test IdP')")
    page.screenshot(path=str(SHOTS / "app-sign-in.png"))
    if AXE.exists():
        assert axe_violations(page) == []
        page.click(f"{LOGIN} button:has-text('Create an account')")
        page.wait_for_selector(f"{SIGNUP}:has-text('An admin approves new accounts')")
        assert axe_violations(page) == []
        page.click(f"{SIGNUP} button:has-text('Sign in')")
    through_provider(page, "olivia", "olivia")
    # A first sign-in makes a pending account (the server's policy is approval): back on the sign-in page, saying so.
    page.wait_for_selector(f"{LOGIN} p.error[role=alert]")
    assert "approv" in page.inner_text(f"{LOGIN} p.error")
    assert "login_error" not in page.url  # said once: a reload does not say it again

    admin = as_admin(browser, team.url)
    row = admin.locator("tr[data-user=olivia]")
    assert "Single sign-on" in row.inner_text()
    assert row.locator("button:has-text('Reset password')").count() == 0  # no password here to reset
    admin.click("section.pending li[data-user=olivia] button:has-text('Approve')")
    admin.wait_for_selector("tr[data-user=olivia] td:has-text('Active')")

    through_provider(page, "olivia", "olivia")  # the provider may remember the first sign-in, or ask again
    signed_in(page, "olivia")
    open_page(page, "Account", "section.account")
    page.wait_for_selector("p:has-text('You sign in through single sign-on')")
    assert page.locator("form.password-form").count() == 0
    assert page.errors == [] and admin.errors == []
