"""The web UI's app factory: the web app (its JSON API under /api and its pages under /app) and the Gradio
app (chat, arena, side-by-side, leaderboard) at /, on one FastAPI app."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import PlainTextResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.middleware.sessions import SessionMiddleware  # noqa: E402

from parley.serving.api_errors import install_error_handlers  # noqa: E402
from parley.store.database import Database  # noqa: E402
from parley.web import arena_tab, chat_tab, leaderboard_tab  # noqa: E402
from parley.web.arena_api import build_arena_router  # noqa: E402
from parley.web.json_api import build_router  # noqa: E402
from parley.web.leaderboard_api import build_leaderboard_router  # noqa: E402
from parley.web.model_client import ModelClient  # noqa: E402
from parley.web.model_descriptions import ModelDescriptions  # noqa: E402
from parley.web.services import WebServices, WebSettings  # noqa: E402
from parley.web.user_input import load_moderator  # noqa: E402

log = logging.getLogger(__name__)
# The web app as built by `make` (npm run build in web/): shipped inside the package.
APP_DIST = Path(__file__).parent / "dist"
SESSION_DAYS = 14
CSS = """
#history { max-height: 60vh; overflow-y: auto; }
#history label { font-size: 0.85em; }
footer { display: none !important; }
"""


def build_blocks(services: WebServices) -> gr.Blocks:
    with gr.Blocks(title="parley", analytics_enabled=False) as blocks:
        gr.Markdown("## parley — chat with, compare and rate language models")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = chat_tab.build(services, [])
            with gr.Tab("Arena (battle)", id="battle", elem_id="tab-battle"):
                arena_tab.build(services, anonymous=True, prefix="battle")
            with gr.Tab("Arena (side-by-side)", id="side", elem_id="tab-side"):
                side = arena_tab.build(services, anonymous=False, prefix="side")
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard"):
                board = leaderboard_tab.build(services)
        who = gr.Markdown(elem_id="signed-in")

        async def on_load(request: gr.Request):
            models = await services.client.list_models()
            user = await asyncio.to_thread(services.user, request)
            first = models[0] if models else None
            picks = [gr.update(choices=models, value=models[i] if len(models) > i else None) for i in (0, 1)]
            rows, line, admin, stats = await asyncio.to_thread(board["show"], request)
            signed = f"Signed in as **{user.username}**" if services.settings.auth else "Local mode (no login)"
            history = await asyncio.to_thread(chat_tab.history_choices, services, request)
            return (gr.update(choices=models, value=first), services.model_info.describe(first),
                    gr.update(choices=history), *picks, rows, line, admin, stats, signed)

        blocks.load(on_load, None, [chat["model"], chat["model_about"], chat["history"], *side["picks"],
                                    *board["outputs"], who])
    # Handlers that stream replies run without Gradio's limit (its default is one at a time per handler, so
    # every user's reply would wait for everyone else's): the reply slots bound them. The others are quick.
    s = services.settings
    blocks.queue(default_concurrency_limit=16, max_size=4 * (s.max_concurrent_replies + s.max_waiting_replies) + 64)
    return blocks


def session_key(settings: WebSettings) -> str:
    """What signs the session cookies: --session-secret if given, else derived from the cluster secret (so every
    web process of a cluster, and a restarted one, accepts the same sessions), else random for this process."""
    if settings.session_secret:
        return settings.session_secret
    if settings.cluster_secret:
        return hmac.new(settings.cluster_secret.encode(), b"parley web sessions", hashlib.sha256).hexdigest()
    return secrets.token_urlsafe(32)


def create_app(settings: WebSettings) -> FastAPI:
    db = Database(settings.db_url)
    db.upgrade()
    services = WebServices(settings=settings, db=db, client=ModelClient(settings.controller_address, settings.cluster_secret),
                           model_info=ModelDescriptions(settings.model_info_file), moderator=load_moderator(settings.moderation))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("web UI on http://%s:%d (models from %s, database %s%s)", settings.host, settings.port,
                 settings.controller_address, db.display_url, ", login required" if settings.auth else "")
        async with leaderboard_tab.schedule(services):  # --leaderboard-interval: one schedule per process
            yield
        await services.live.stop_all()  # replies being written end, stored as stopped
        await services.client.aclose()
        db.close()
        log.info("web UI stopped")

    app = FastAPI(title="parley web", lifespan=lifespan,
                  description="The JSON API of parley's web app: the session, live models, conversations and "
                              "their replies (server-sent events).")
    install_error_handlers(app)
    app.add_middleware(SessionMiddleware, secret_key=session_key(settings),
                       session_cookie="parley_session", max_age=SESSION_DAYS * 86400, same_site="strict")
    app.include_router(build_router())
    app.include_router(build_arena_router())
    app.include_router(build_leaderboard_router())
    if (APP_DIST / "index.html").is_file():
        app.mount("/app", StaticFiles(directory=APP_DIST, html=True), name="app")
    else:
        @app.get("/app/{path:path}", include_in_schema=False)
        async def app_not_built(path: str) -> PlainTextResponse:
            return PlainTextResponse("parley's web app is not built: run `make install` (it runs npm in web/)",
                                     status_code=503)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    auth = None
    if settings.auth:
        async def auth(username: str, password: str) -> bool:  # argon2 and the database: in a thread
            return await asyncio.to_thread(services.accounts.authenticate, username, password) is not None

    blocks = build_blocks(services)
    app.state.services = services
    return gr.mount_gradio_app(app, blocks, path="/", auth=auth, auth_message="Sign in to parley", css=CSS,
                               theme=gr.themes.Soft(), ssr_mode=False)
