"""The leaderboard's data: Arena ratings (the ratings JSON of `parley eval ratings`, recomputed from the stored
votes on demand or on a schedule) and MT-bench scores beside them.

Recomputing from the web app is for admins (the local user is one), at most once in RECOMPUTE_EVERY_S per
process; `--leaderboard-interval` runs one schedule per process, started with the app (`schedule`), and each
open page only re-reads the file. The work runs in a thread, off the event loop. The file is replaced whole
(`arena_leaderboard.write`); a torn or foreign one is reported on the page, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from parley.eval import arena_leaderboard
from parley.eval.arena_battles import load_battles
from parley.eval.atomic import write_text_atomic
from parley.eval.mt_bench_files import read_complete_jsonl
from parley.eval.mt_bench_results import single_scores
from parley.paths import data_home
from parley.store.models import User
from parley.web.services import WebServices

log = logging.getLogger(__name__)
RECOMPUTE_EVERY_S = 30.0  # the most often one web process recomputes when an admin presses the button
NO_RATINGS = "No Arena ratings yet: vote in the Arena, then press Recompute."
UNREADABLE = ("The leaderboard file is unreadable (cut short, or not a leaderboard), so no Arena ratings are shown; "
              "an admin can press Recompute to write it again.")


def leaderboard_file(services: WebServices) -> Path:
    return services.settings.leaderboard_file or data_home() / "arena_ratings" / "leaderboard.json"


def mt_bench_scores(services: WebServices) -> dict[str, float]:
    path = services.settings.mt_bench_judgments or data_home() / "mt_bench" / "model_judgment" / "gpt-4_single.jsonl"
    if not path.is_file():
        return {}
    try:  # a judge run may be appending to the file: its torn last line is left out
        return {s.model: s.average for s in single_scores(read_complete_jsonl(path)) if s.average is not None}
    except Exception as exc:  # noqa: BLE001 - a broken file must not take the leaderboard down
        log.warning("MT-bench scores from %s: %s", path, exc)
        return {}


def recompute(services: WebServices) -> str:
    """Ratings from the stored votes, written to the leaderboard file; returns a status line. Blocking: CPU and
    database work, for a thread."""
    battles, cleaning = load_battles([], extra=services.votes.battles())
    if len({b.model_a for b in battles} | {b.model_b for b in battles}) < 2:
        return f"Not enough votes yet: {cleaning.battles} usable battles."
    board = arena_leaderboard.build(battles, cleaning, rounds=services.settings.bootstrap_rounds, elo_rounds=20)
    path = leaderboard_file(services)
    arena_leaderboard.write(board, path.parent, plots=False)
    if path.name != "leaderboard.json":  # --leaderboard-file with a name of its own: that is the file shown
        write_text_atomic(path, board.model_dump_json(indent=1))
    return f"Recomputed from {board.battles} battles."


class RecomputeGate:
    """Who may recompute from the UI, and how often: admins only, at most once in `every_s` (per gate: one per
    process, made with the tab)."""

    def __init__(self, every_s: float = RECOMPUTE_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self._clock = clock
        self._last: float | None = None

    def refusal(self, user: User) -> str | None:
        """Why `user` may not recompute now; None when they may (and the interval starts again now)."""
        if not user.is_admin:
            return "Only admins can recompute the leaderboard."
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            ago = now - self._last
            return (f"The leaderboard was recomputed {ago:.0f} s ago; it can be recomputed again in "
                    f"{math.ceil(self.every_s - ago)} s.")
        self._last = now
        return None


async def recompute_every(services: WebServices, interval_s: float) -> None:
    """Recompute from the stored votes every `interval_s` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            line = await asyncio.to_thread(recompute, services)
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("recomputing the leaderboard on schedule")
        else:
            log.info("leaderboard: %s", line)


@contextlib.asynccontextmanager
async def schedule(services: WebServices) -> AsyncIterator[None]:
    """`--leaderboard-interval`: the one recompute schedule of this process, for as long as the block runs (the
    app's lifespan); nothing without an interval."""
    interval = services.settings.leaderboard_interval_s
    if interval <= 0:
        yield
        return
    task = asyncio.create_task(recompute_every(services, interval), name="leaderboard schedule")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
