"""The web UI's app factory: a Gradio app (chat, arena, side-by-side, leaderboard) mounted on FastAPI."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from parley.store.database import Database  # noqa: E402
from parley.web import arena_tab, chat_tab, leaderboard_tab  # noqa: E402
from parley.web.model_client import ModelClient  # noqa: E402
from parley.web.model_descriptions import ModelDescriptions  # noqa: E402
from parley.web.services import WebServices, WebSettings  # noqa: E402
from parley.web.user_input import load_moderator  # noqa: E402

log = logging.getLogger(__name__)
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
        await services.client.aclose()
        db.close()
        log.info("web UI stopped")

    app = FastAPI(title="parley web", lifespan=lifespan)

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
