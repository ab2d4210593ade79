"""The leaderboard: Arena ratings with intervals and votes (the ratings JSON of `parley eval ratings`,
recomputed from the stored votes on demand or on a schedule), with MT-bench scores beside them."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from parley.eval import arena_leaderboard
from parley.eval.arena_battles import load_battles
from parley.eval.mt_bench_files import data_home, read_jsonl
from parley.eval.mt_bench_results import single_scores
from parley.web.services import WebServices

log = logging.getLogger(__name__)
COLUMNS = ["rank", "model", "rating", "95% interval", "votes", "MT-bench"]


def leaderboard_file(services: WebServices) -> Path:
    return services.settings.leaderboard_file or data_home() / "arena_ratings" / "leaderboard.json"


def mt_bench_scores(services: WebServices) -> dict[str, float]:
    path = services.settings.mt_bench_judgments or data_home() / "mt_bench" / "model_judgment" / "gpt-4_single.jsonl"
    if not path.is_file():
        return {}
    try:
        return {s.model: s.average for s in single_scores(read_jsonl(path)) if s.average is not None}
    except Exception as exc:  # noqa: BLE001 - a broken file must not take the leaderboard down
        log.warning("MT-bench scores from %s: %s", path, exc)
        return {}


def recompute(services: WebServices) -> str:
    """Ratings from the stored votes, written to the leaderboard file; returns a status line."""
    battles, cleaning = load_battles([], extra=services.votes.battles())
    if len({b.model_a for b in battles} | {b.model_b for b in battles}) < 2:
        return f"Not enough votes yet: {cleaning.battles} usable battles."
    board = arena_leaderboard.build(battles, cleaning, rounds=services.settings.bootstrap_rounds, elo_rounds=20)
    arena_leaderboard.write(board, leaderboard_file(services).parent, plots=False)
    return f"Recomputed from {board.battles} battles."


def table(services: WebServices) -> tuple[list[list], str]:
    path = leaderboard_file(services)
    mt = mt_bench_scores(services)
    if not path.is_file():
        rows = [["", m, "", "", "", f"{s:.2f}"] for m, s in sorted(mt.items(), key=lambda kv: -kv[1])]
        return rows, "No Arena ratings yet: vote in the Arena, then press Recompute."
    board = arena_leaderboard.read(path)
    rows = [[*arena_leaderboard.cells(r)[:5], f"{mt[r.model]:.2f}" if r.model in mt else ""] for r in board.rows]
    return rows, f"{board.method}, {board.battles} battles, {board.bootstrap_rounds} bootstrap rounds."


def build(services: WebServices) -> dict:
    gr.Markdown("Arena ratings on the Elo scale (Bradley–Terry, 95% bootstrap intervals) from anonymous battles; "
                "MT-bench averages where judgments exist.")
    board = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="leaderboard", wrap=True)
    status = gr.Markdown(elem_id="leaderboard-status")
    refresh = gr.Button("Recompute from votes", elem_id="leaderboard-recompute")
    with gr.Accordion("Vote statistics (admins)", open=False, visible=False) as admin:
        stats = gr.JSON(elem_id="vote-stats")

    def show(request: gr.Request):
        rows, line = table(services)
        user = services.user(request)
        return rows, line, gr.update(visible=user.is_admin), services.votes.stats().model_dump() if user.is_admin else {}

    def redo(request: gr.Request):
        line = recompute(services)
        rows, info = table(services)
        user = services.user(request)
        return rows, f"{line} {info}", gr.update(visible=user.is_admin), (
            services.votes.stats().model_dump() if user.is_admin else {})

    refresh.click(redo, None, [board, status, admin, stats])
    if services.settings.leaderboard_interval_s > 0:
        gr.Timer(services.settings.leaderboard_interval_s).tick(redo, None, [board, status, admin, stats])
    return {"show": show, "outputs": [board, status, admin, stats]}
