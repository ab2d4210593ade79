"""Sign-in through an OpenID Connect provider (a team's Keycloak, Google, Microsoft...), with Authlib's Starlette
client: the authorization-code flow (with PKCE), the ID token checked by Authlib (signature, issuer, audience,
nonce, expiry).

GET /api/oidc/login sends the browser to the provider; the provider sends it back to GET /api/oidc/callback,
which maps the provider's user (issuer, subject) to a parley account (made on the first sign-in as the sign-up
policy says) and signs it in. Either way the browser lands on the web app: /app/ signed in, or
/app/?login_error=<why> (a pending, disabled or refused account, or the provider failed), which the sign-in page
shows. Needs --auth (without it there is no one to sign in)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from joserfc.errors import JoseError

from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.web.json_api import DISABLED, PENDING, _services, sign_in
from parley.web.services import OIDCSettings

log = logging.getLogger(__name__)
PROVIDER = "provider"  # the one client registered (its state lives in the session under this name)
HOME = "/app/"


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _failed(message: str) -> RedirectResponse:
    return RedirectResponse(f"{HOME}?login_error={quote(message)}", status_code=302)


def build_oidc_router(oidc: OIDCSettings | None) -> APIRouter:
    """The routes; with `oidc` None (not configured, or no --auth) both answer 404 oidc_not_configured."""
    router = APIRouter(prefix="/api/oidc")
    oauth = OAuth()
    if oidc is not None:
        # The provider's endpoints and keys come from its discovery document, fetched (and kept) at the first
        # sign-in, so a provider that is down at start does not stop the web UI.
        oauth.register(PROVIDER, client_id=oidc.client_id, client_secret=oidc.client_secret,
                       server_metadata_url=discovery_url(oidc.issuer),
                       client_kwargs={"scope": oidc.scopes, "code_challenge_method": "S256", "timeout": 20})

    def client():
        if oidc is None:
            raise APIError(404, "this server has no sign-in through an OpenID Connect provider",
                           code="oidc_not_configured")
        return oauth.create_client(PROVIDER)

    @router.get("/login", include_in_schema=True, response_class=RedirectResponse, status_code=302)
    async def login(request: Request) -> RedirectResponse:
        """302 to the provider's sign-in page, which comes back to /api/oidc/callback."""
        provider = client()
        try:
            return await provider.authorize_redirect(request, str(request.url_for("oidc_callback")))
        except (AuthlibBaseError, httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("OpenID Connect provider %s: %s", oidc.issuer, exc)
            return _failed(f"{oidc.name} could not be reached: try again later")

    @router.get("/callback", name="oidc_callback", response_class=RedirectResponse, status_code=302)
    async def callback(request: Request) -> RedirectResponse:
        """Where the provider sends the browser back: 302 to /app/ signed in, or to /app/?login_error=..."""
        provider = client()
        services = _services(request)
        try:
            token = await provider.authorize_access_token(request)
            claims = token.get("userinfo") or await provider.userinfo(token=token)
        except AuthlibBaseError as exc:  # the user said no, a stale or forged state, a claim that does not check
            log.info("OpenID Connect sign-in refused: %s", exc)
            return _failed(f"sign-in with {oidc.name} failed ({exc.description or exc.error})")
        except JoseError as exc:  # an ID token whose signature does not check
            log.warning("OpenID Connect provider %s: a bad ID token: %s", oidc.issuer, exc)
            return _failed(f"sign-in with {oidc.name} failed (its ID token does not check)")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("OpenID Connect provider %s: %s", oidc.issuer, exc)
            return _failed(f"{oidc.name} could not be reached: try again later")
        issuer, subject = claims.get("iss") or oidc.issuer, claims.get("sub")
        if not subject:
            return _failed(f"{oidc.name} did not say who you are")
        preferred = claims.get("preferred_username") or claims.get("email") or subject
        try:
            user = await asyncio.to_thread(services.accounts.oidc_user, issuer, subject, preferred,
                                           services.settings.signup)
        except ParleyError as exc:  # no account, and sign-up is closed
            return _failed(str(exc))
        if user.status == "pending":
            return _failed(PENDING)
        if user.status != "active":
            return _failed(DISABLED)
        await asyncio.to_thread(services.accounts.signed_in, user.id)
        sign_in(request, user)
        log.info("%s signed in through %s", user.username, oidc.issuer)
        return RedirectResponse(HOME, status_code=302)

    return router
