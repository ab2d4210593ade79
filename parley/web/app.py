"""The web UI's app factory: the web app's pages under /app (built from web/) and its JSON API under /api."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from parley.serving.api_errors import install_error_handlers
from parley.serving.cluster_client import Cluster
from parley.store.database import Database
from parley.web import leaderboard
from parley.web.account_api import build_account_router
from parley.web.admin_api import build_admin_router
from parley.web.arena_api import build_arena_router
from parley.web.json_api import build_router
from parley.web.knowledge_api import build_knowledge_router
from parley.web.leaderboard_api import build_leaderboard_router
from parley.web.model_client import ModelClient
from parley.web.model_descriptions import ModelDescriptions
from parley.web.oidc import build_oidc_router
from parley.web.services import WebServices, WebSettings
from parley.web.user_input import load_moderator

log = logging.getLogger(__name__)
# The web app as built by `make` (npm run build in web/): shipped inside the package.
APP_DIST = Path(__file__).parent / "dist"


def session_key(settings: WebSettings) -> str:
    """What signs the session cookies: `WebSettings.session_secret` if set, else derived from the cluster secret (so every
    web process of a cluster, and a restarted one, accepts the same sessions), else random for this process."""
    if settings.session_secret:
        return settings.session_secret
    if settings.cluster_secret:
        return hmac.new(settings.cluster_secret.encode(), b"parley web sessions", hashlib.sha256).hexdigest()
    return secrets.token_urlsafe(32)


def create_app(settings: WebSettings, cluster: Cluster | None = None) -> FastAPI:
    """`cluster`: where the models are (default: the controller at `settings.controller_address`)."""
    db = Database(settings.db_url)
    db.upgrade()
    client = ModelClient(settings.controller_address, settings.cluster_secret,
                         hidden=tuple(filter(None, [settings.embedding_model])), cluster=cluster)
    services = WebServices(settings=settings, db=db, client=client,
                           model_info=ModelDescriptions(settings.model_info_file), moderator=load_moderator(settings.moderation))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("web UI on http://%s:%d/app/ (models from %s, database %s%s)", settings.host, settings.port,
                 settings.controller_address if cluster is None else type(cluster).__name__, db.display_url,
                 ", login required" if settings.auth else "")
        if settings.auth:
            log.info("sign-up: %s; sign-in through OpenID Connect: %s", settings.signup,
                     f"{settings.oidc.issuer} ({settings.oidc.name})" if settings.oidc else "no")
        await services.usage_recorder.start()
        async with leaderboard.schedule(services):  # --leaderboard-interval: one schedule per process
            yield
        await services.live.stop_all()  # replies being written end, stored as stopped
        await services.usage_recorder.stop()  # after the replies: their usage is written too
        await services.client.aclose()
        db.close()
        log.info("web UI stopped")

    app = FastAPI(title="parley web", lifespan=lifespan,
                  description="The JSON API of parley's web app: the session (sign-in, sign-up, OpenID Connect), "
                              "the account (password, API keys, usage), admins' pages, live models, conversations "
                              "and their replies (server-sent events), the Arena and the leaderboard.")
    install_error_handlers(app)  # an APIError's headers go with it (a 429's Retry-After)
    # Lax, not strict: the browser coming back from an OpenID Connect provider (a top-level GET from another site)
    # must bring the session, which holds the sign-in's state. Cross-site requests that change something still
    # fail: each needs the session's X-CSRF-Token header, which another site cannot read. The cookie's max_age
    # is the longest a sign-in lasts; each request also checks the sign-in's age on the server.
    app.add_middleware(SessionMiddleware, secret_key=session_key(settings), session_cookie="parley_session",
                       max_age=max(1, int(settings.session_hours * 3600)), same_site="lax")
    app.include_router(build_router())
    app.include_router(build_account_router())
    app.include_router(build_admin_router())
    app.include_router(build_oidc_router(settings.oidc if settings.auth else None))
    app.include_router(build_arena_router())
    app.include_router(build_knowledge_router())
    app.include_router(build_leaderboard_router())
    app.state.services = services

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/app/")

    if (APP_DIST / "index.html").is_file():
        app.mount("/app", StaticFiles(directory=APP_DIST, html=True), name="app")
    else:
        @app.get("/app/{path:path}", include_in_schema=False)
        async def app_not_built(path: str) -> PlainTextResponse:
            return PlainTextResponse("parley's web app is not built: run `make install` (it runs npm in web/)",
                                     status_code=503)
    return app
