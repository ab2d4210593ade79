"""A real OpenID Connect provider for tests: panva's `oidc-provider` (tests/oidc_provider/provider.mjs) on 127.0.0.1.

    with start_oidc_provider(["http://127.0.0.1:7860/api/oidc/callback"]) as idp:
        ... idp.issuer, idp.client_id, idp.client_secret, idp.discovery_url ...

Signing in there: any login name with any non-empty password (the library's development login form), then a
consent page ("Continue") unless `skip_consent=True`. The account's claims: sub = preferred_username = the login
name, email = <login>@example.test, email_verified = true, name; in the ID token as well as at userinfo.
`login_with_httpx` drives those pages with plain HTTP.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.servers import interrupt

REPO = Path(__file__).resolve().parents[1]
PROVIDER_DIR = REPO / "tests" / "oidc_provider"
PROVIDER_SCRIPT = PROVIDER_DIR / "provider.mjs"
READY = re.compile(r"^oidc provider ready on (http://\S+)\s*$")


class OIDCProvider:
    """A running provider.mjs: one confidential client (`client_id`, `client_secret`, `redirect_uris`)."""

    def __init__(self, redirect_uris: list[str], client_id: str = "parley", client_secret: str = "s3cret-for-tests",
                 port: int = 0, skip_consent: bool = False, post_logout_redirect_uris: list[str] = (),
                 timeout: float = 90):  # node starting on a loaded 2-core host has taken over 30 s
        node = shutil.which("node")
        if node is None:
            pytest.skip("node is not installed (the OIDC provider is a Node.js program)")
        if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.skip("tests/oidc_provider/node_modules is missing (cd tests/oidc_provider && npm ci)")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        args = [node, str(PROVIDER_SCRIPT), "--port", str(port), "--client-id", client_id,
                "--client-secret", client_secret, "--redirect-uri", ",".join(self.redirect_uris)]
        if post_logout_redirect_uris:
            args += ["--post-logout-redirect-uri", ",".join(post_logout_redirect_uris)]
        if skip_consent:
            args.append("--skip-consent")
        self._log = tempfile.NamedTemporaryFile("w+", prefix="oidc-provider-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, cwd=PROVIDER_DIR, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, "NODE_ENV": "test"})
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.issuer = self._wait_ready(timeout)
            self._wait_discovery(timeout)
        except BaseException:
            self.stop()
            raise
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.port = urlsplit(self.issuer).port

    def _pump(self) -> None:
        """Copy the provider's stdout to the log (and to the queue, where the ready line is looked for)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the OIDC provider was not ready within {timeout} s:\n{self.log()}") from None
            if line is None:
                self.proc.wait(timeout=5)
                raise AssertionError(f"the OIDC provider exited ({self.proc.returncode}) first:\n{self.log()}")
            if m := READY.match(line):
                return m.group(1)

    def _wait_discovery(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5)
                if r.status_code == 200 and r.json().get("issuer") == self.issuer:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the OIDC provider's discovery document never came:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        """What the provider wrote (stderr, then the stdout lines read so far)."""
        return Path(self._log.name).read_text()

    def metadata(self) -> dict:
        return httpx.get(self.discovery_url, timeout=10).raise_for_status().json()

    def stop(self, timeout: float = 10) -> int:
        return interrupt(self.proc, timeout)

    def __enter__(self) -> OIDCProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def start_oidc_provider(redirect_uris: list[str], client_id: str = "parley", client_secret: str = "s3cret-for-tests",
                        **kwargs):
    """Start provider.mjs on a free port (skip the test when node or its npm packages are missing); stop it after.
    kwargs: port (0: any free one), skip_consent, post_logout_redirect_uris, timeout."""
    provider = OIDCProvider(redirect_uris, client_id=client_id, client_secret=client_secret, **kwargs)
    try:
        yield provider
    finally:
        provider.stop()


class _Forms(HTMLParser):
    """The <form>s of a page: action, method and the named inputs' values."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "method": (a.get("method") or "get").lower(),
                               "fields": {}})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1]["fields"].setdefault(a["name"], a.get("value") or "")


def _origin(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.scheme, u.netloc


def login_with_httpx(client: httpx.Client, start_url: str, login: str, password: str = "any-password",
                     fetch_callback: bool = True, follow_rp_redirects: bool = False,
                     max_steps: int = 30) -> httpx.Response:
    """Sign in at the provider as `login` with plain HTTP, from `start_url`: the relying party's login URL (which
    redirects to the provider's authorization endpoint) or that authorization URL itself.

    Follows the redirects one by one, fills the login form (login, password) and presses the consent page's Continue
    when they come (an existing session and grant skip them), until the provider redirects to the redirect_uri of the
    authorization request (the callback). Then:
      fetch_callback=False: returns the provider's redirect (its Location holds `code`, `state` and `iss`);
      otherwise GETs the callback and returns its response, following the relying party's own redirects after it
      only with follow_rp_redirects=True.
    The cookies (the provider's session and the relying party's) stay in `client`. A page that is neither a form of
    the provider's nor the callback (an error page, say) is returned as it is.
    """
    callback: str | None = None  # the authorization request's redirect_uri, once seen
    previous: httpx.Response | None = None
    method, url, data = "GET", start_url, None
    for _ in range(max_steps):
        if callback is None:
            q = parse_qs(urlsplit(url).query)
            if "redirect_uri" in q and "client_id" in q:
                callback = q["redirect_uri"][0]
        if callback is not None and method == "GET" and url.split("?")[0] == callback.split("?")[0] \
                and _origin(url) == _origin(callback):
            if not fetch_callback and previous is not None:
                return previous
            return client.get(url, follow_redirects=follow_rp_redirects)
        response = client.request(method, url, data=data, follow_redirects=False)
        previous = response
        if response.is_redirect:
            method, url, data = "GET", urljoin(str(response.url), response.headers["location"]), None
            continue
        form = _provider_form(response)
        if form is None:
            return response
        fields = dict(form["fields"])
        if fields.get("prompt") == "login":
            fields.update(login=login, password=password)
        method, url, data = "POST", urljoin(str(response.url), form["action"]), fields
    raise AssertionError(f"login_with_httpx: no callback after {max_steps} steps (last: {method} {url})")


def _provider_form(response: httpx.Response) -> dict | None:
    """The login or consent form of an oidc-provider interaction page, if that is what `response` is."""
    if response.status_code != 200 or "html" not in response.headers.get("content-type", ""):
        return None
    parser = _Forms()
    parser.feed(response.text)
    for form in parser.forms:
        if form["method"] == "post" and form["fields"].get("prompt") in ("login", "consent"):
            return form
    return None
