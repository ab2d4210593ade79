"""The Arena leaderboard: ratings with intervals and votes, as JSON (read by the web UI), markdown, CSV and PNG."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from parley.eval.arena_battles import Battle, Cleaning, battle_counts
from parley.eval.arena_ratings import (
    bootstrap_bt,
    bootstrap_elo,
    bradley_terry,
    pairwise_matrices,
)
from parley.eval.atomic import write_text_atomic


class Row(BaseModel):
    rank: int  # 1 + the number of models rated better beyond doubt (lower bound above this upper bound)
    model: str
    rating: float  # Bradley–Terry
    lower: float
    upper: float
    votes: int
    elo: float  # online Elo, for comparison
    elo_lower: float
    elo_upper: float
    provisional: bool = False  # the votes do not pin this rating down (see identified_models)


class Leaderboard(BaseModel):
    generated: float
    method: str  # "bradley-terry" or "bradley-terry, style control"
    confidence: float
    bootstrap_rounds: int
    battles: int
    rows: list[Row]
    style_coefficients: dict[str, float] = {}
    win_rate: dict[str, dict[str, float | None]]
    battle_count: dict[str, dict[str, int]]
    cleaning: Cleaning


def identified_models(battles: Sequence[Battle]) -> set[str]:
    """Models whose Bradley–Terry rating is finite: the maximum likelihood exists only where every model can be
    reached from every other by "beat or tied" steps (the win graph is strongly connected). A model that never
    lost, or never won, against the rest is left out (its rating runs off to infinity)."""
    beats: dict[str, set[str]] = {}
    for b in battles:
        beats.setdefault(b.model_a, set())
        beats.setdefault(b.model_b, set())
        if b.winner != "model_b":
            beats[b.model_a].add(b.model_b)
        if b.winner != "model_a":
            beats[b.model_b].add(b.model_a)
    # The largest strongly connected component (Kosaraju), if it has at least two models.
    order, seen = [], set()
    for start in beats:
        if start in seen:
            continue
        stack = [(start, iter(beats[start]))]
        seen.add(start)
        while stack:
            node, children = stack[-1]
            nxt = next((c for c in children if c not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(beats[nxt])))
    reverse: dict[str, set[str]] = {m: set() for m in beats}
    for a, targets in beats.items():
        for t in targets:
            reverse[t].add(a)
    assigned: set[str] = set()
    components = []
    for node in reversed(order):
        if node in assigned:
            continue
        component, todo = set(), [node]
        while todo:
            n = todo.pop()
            if n in assigned:
                continue
            assigned.add(n)
            component.add(n)
            todo += [r for r in reverse[n] if r not in assigned]
        components.append(component)
    biggest = max(components, key=len, default=set())
    return biggest if len(biggest) >= 2 else set()


def build(battles: Sequence[Battle], cleaning: Cleaning, rounds: int = 1000, elo_rounds: int = 100, style: bool = False,
          seed: int = 0, progress=None) -> Leaderboard:
    bt = bootstrap_bt(battles, rounds=rounds, seed=seed, style=style, progress=progress)
    elo = bootstrap_elo(battles, rounds=elo_rounds, seed=seed, progress=progress)
    _, style_coef = bradley_terry(battles, style=style) if style else (None, {})
    votes = battle_counts(battles)
    ordered = sorted(bt, key=lambda m: -bt[m].rating)
    identified = identified_models(battles)
    rows = [Row(rank=1 + sum(bt[o].lower > bt[m].upper for o in bt), model=m, rating=bt[m].rating, lower=bt[m].lower,
                upper=bt[m].upper, votes=votes[m], elo=elo[m].rating, elo_lower=elo[m].lower, elo_upper=elo[m].upper,
                provisional=m not in identified)
            for m in ordered]
    rate, count = pairwise_matrices(battles, ordered)
    return Leaderboard(generated=time.time(), method="bradley-terry" + (", style control" if style else ""),
                       confidence=0.95, bootstrap_rounds=rounds, battles=len(battles), rows=rows,
                       style_coefficients=style_coef, win_rate=rate, battle_count=count, cleaning=cleaning)


HEADER = ["rank", "model", "rating", "95% interval", "votes", "online Elo"]


PROVISIONAL = "needs more votes"


def cells(r: Row) -> list[str]:
    if r.provisional:
        return [str(r.rank), r.model, "—", PROVISIONAL, str(r.votes), f"{r.elo:.0f}"]
    return [str(r.rank), r.model, f"{r.rating:.0f}", f"{r.lower:.0f} – {r.upper:.0f}", str(r.votes), f"{r.elo:.0f}"]


def to_markdown(board: Leaderboard) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---:|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in board.rows]
    return "\n".join(lines) + "\n"


def to_csv(board: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "model", "rating", "lower", "upper", "votes", "elo", "elo_lower", "elo_upper"])
    for r in board.rows:
        writer.writerow([r.rank, r.model, f"{r.rating:.2f}", f"{r.lower:.2f}", f"{r.upper:.2f}", r.votes, f"{r.elo:.2f}",
                         f"{r.elo_lower:.2f}", f"{r.elo_upper:.2f}"])
    return out.getvalue()


def write(board: Leaderboard, output_dir: Path, plots: bool = True) -> list[Path]:
    """Each file is replaced whole (a temporary file renamed over it): the web UI, reading the JSON while it is
    recomputed, or after a writer was killed, finds the old board or the new one, never a torn file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("leaderboard.json", board.model_dump_json(indent=1)), ("leaderboard.md", to_markdown(board)),
                       ("leaderboard.csv", to_csv(board))):
        write_text_atomic(output_dir / name, text)
        written.append(output_dir / name)
    if plots:
        written += [plot_ratings(board, output_dir / "ratings.png"), plot_win_rates(board, output_dir / "win_rates.png")]
    return written


def read(path: Path) -> Leaderboard:
    return Leaderboard.model_validate(json.loads(path.read_text(encoding="utf-8")))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratings(board: Leaderboard, path: Path) -> Path:
    plt = _pyplot()
    rows = board.rows[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    ax.errorbar([r.rating for r in rows], list(y), xerr=[[r.rating - r.lower for r in rows], [r.upper - r.rating for r in rows]],
                fmt="o", capsize=4)
    ax.set_yticks(list(y))
    ax.set_yticklabels([r.model for r in rows])
    ax.set_xlabel(f"rating ({board.method}), {int(board.confidence * 100)}% bootstrap interval")
    ax.set_title(f"Arena ratings from {board.battles} battles")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_win_rates(board: Leaderboard, path: Path) -> Path:
    plt = _pyplot()
    import numpy as np

    models = [r.model for r in board.rows]
    grid = np.array([[board.win_rate[a].get(b) if a != b else None for b in models] for a in models], dtype=float)
    fig, ax = plt.subplots(figsize=(0.8 * len(models) + 3, 0.7 * len(models) + 2))
    image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(models)), labels=models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), labels=models)
    for i in range(len(models)):
        for j in range(len(models)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("model B")
    ax.set_ylabel("model A")
    ax.set_title("fraction of battles A won against B (ties as half)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
