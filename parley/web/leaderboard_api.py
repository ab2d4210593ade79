"""The web app's leaderboard under /api/leaderboard: the Arena ratings (the ratings JSON that `parley eval ratings`
and the recompute write), their 95% intervals and vote counts, which votes were not counted and why, and the
MT-bench scores beside them (averages, and per category for the radar chart). Recomputing from the stored votes
is for admins, at most once in 30 s per process, as in the Gradio app."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Depends, Request

from parley.eval import arena_leaderboard
from parley.eval.mt_bench_files import read_complete_jsonl
from parley.eval.mt_bench_results import category_scores
from parley.paths import data_home
from parley.serving.api_errors import APIError
from parley.store.models import User
from parley.web.api_schemas import LeaderboardRow, LeaderboardView, MTBenchCategories
from parley.web.json_api import _services, check_csrf, current_user
from parley.web.leaderboard import (
    NO_RATINGS,
    UNREADABLE,
    RecomputeGate,
    leaderboard_file,
    mt_bench_scores,
    recompute,
)
from parley.web.services import WebServices

log = logging.getLogger(__name__)


def _judgments_file(services: WebServices) -> Path:
    return services.settings.mt_bench_judgments or data_home() / "mt_bench" / "model_judgment" / "gpt-4_single.jsonl"


def _categories(services: WebServices) -> MTBenchCategories | None:
    """Per-category MT-bench scores, where the judgments and their questions (question.jsonl beside
    model_judgment/) exist."""
    judgments = _judgments_file(services)
    questions = judgments.parent.parent / "question.jsonl"
    if not judgments.is_file() or not questions.is_file():
        return None
    try:
        scores = category_scores(read_complete_jsonl(judgments), read_complete_jsonl(questions))
    except Exception as exc:  # noqa: BLE001 - a broken file must not take the leaderboard down
        log.warning("MT-bench categories from %s: %s", judgments, exc)
        return None
    categories = sorted({c for per in scores.values() for c in per})
    return MTBenchCategories(categories=categories, scores=scores) if scores else None


def leaderboard(services: WebServices, user: User, status: str | None = None) -> LeaderboardView:
    """Blocking (files): for a thread."""
    mt = mt_bench_scores(services)
    rows: list[LeaderboardRow] = []
    not_counted: dict[str, int] = {}
    try:
        board = arena_leaderboard.read(leaderboard_file(services))
        line = f"{board.method}, {board.battles} battles, {board.bootstrap_rounds} bootstrap rounds."
        not_counted = dict(board.cleaning.dropped)
        for r in board.rows:
            rated = not r.provisional
            rows.append(LeaderboardRow(rank=r.rank, model=r.model, rating=r.rating if rated else None,
                                       lower=r.lower if rated else None, upper=r.upper if rated else None,
                                       votes=r.votes, mt_bench=mt.get(r.model)))
    except FileNotFoundError:
        line = NO_RATINGS
    except (OSError, ValueError) as exc:  # torn JSON, or not a leaderboard
        log.warning("leaderboard file is unreadable: %s", str(exc).splitlines()[0] if str(exc) else exc)
        line = UNREADABLE
    rated = {row.model for row in rows}
    rows += [LeaderboardRow(rank=None, model=m, rating=None, lower=None, upper=None, votes=0, mt_bench=s)
             for m, s in sorted(mt.items(), key=lambda kv: -kv[1]) if m not in rated]
    return LeaderboardView(status=f"{status} {line}" if status else line, rows=rows, not_counted=not_counted,
                           mt_bench=_categories(services), can_recompute=user.is_admin,
                           vote_stats=services.votes.stats().model_dump() if user.is_admin else None)


def build_leaderboard_router() -> APIRouter:
    router = APIRouter(prefix="/api/leaderboard", dependencies=[Depends(check_csrf)])
    gate = RecomputeGate()  # one per app: recomputing is bounded per process

    @router.get("", response_model=LeaderboardView)
    async def show(request: Request, user: User = Depends(current_user)) -> LeaderboardView:
        return await asyncio.to_thread(leaderboard, _services(request), user)

    @router.post("/recompute", response_model=LeaderboardView)
    async def redo(request: Request, user: User = Depends(current_user)) -> LeaderboardView:
        services = _services(request)
        refusal = gate.refusal(user)
        if refusal is not None:
            raise APIError(403 if not user.is_admin else 429, refusal, code="recompute_refused")
        try:
            line = await asyncio.to_thread(recompute, services)
        except Exception as exc:  # noqa: BLE001 - said to the admin, logged with its traceback
            log.exception("recomputing the leaderboard")
            raise APIError(500, f"recomputing failed: {exc}", type="server_error") from None
        return await asyncio.to_thread(leaderboard, services, user, line)

    return router
