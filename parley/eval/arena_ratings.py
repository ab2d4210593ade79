"""Arena ratings from battles: online Elo, Bradley–Terry maximum likelihood, bootstrap intervals.

Both use the Elo scale: P(a beats b) = 1 / (1 + BASE ** ((R_b - R_a) / SCALE)), with SCALE 400,
BASE 10 and ratings centred on INIT 1000 (the mean rating is 1000).

- Online Elo (FastChat's compute_elo): battles in time order, K = 4; a tie scores 0.5.
- Bradley–Terry: the weighted logistic regression that FastChat fits with scikit-learn, solved
  here by Newton's method on the aggregated (model a, model b, outcome) counts, so that a
  thousand bootstrap rounds take seconds. A tie (also "both bad") is half a win for each side,
  as in FastChat. Optional style control adds per-battle features (answer length, markdown
  headers, lists, bold) whose coefficients absorb the preference for style, leaving the
  model coefficients as style-free ratings.
- Bootstrap: battles resampled with replacement; the interval is the 2.5th–97.5th percentile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from parley.eval.arena_battles import Battle

SCALE, BASE, INIT, ELO_K = 400.0, 10.0, 1000.0, 4.0
STYLE_FEATURES = ("length", "headers", "lists", "bold")


def score_a(battle: Battle) -> float:
    return {"model_a": 1.0, "model_b": 0.0}.get(battle.winner, 0.5)


def online_elo(battles: Sequence[Battle], k: float = ELO_K) -> dict[str, float]:
    rating: dict[str, float] = {}
    for b in battles:
        ra, rb = rating.get(b.model_a, INIT), rating.get(b.model_b, INIT)
        ea = 1.0 / (1.0 + BASE ** ((rb - ra) / SCALE))
        sa = score_a(b)
        rating[b.model_a] = ra + k * (sa - ea)
        rating[b.model_b] = rb + k * ((1.0 - sa) - (1.0 - ea))
    return rating


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, fixed: int | None = 0, ridge: float = 1e-8,
                 max_iter: int = 100) -> np.ndarray:
    """Weighted logistic regression without intercept, by Newton's method from zero.

    The model columns of a battle row sum to zero, so the likelihood does not change when every
    model coefficient moves by the same amount; column `fixed` is held at zero to pin that
    direction down (callers centre the result). A negligible ridge keeps the solution finite
    when a model never lost.
    """
    keep = np.ones(x.shape[1], dtype=bool)
    if fixed is not None:
        keep[fixed] = False
    xr = x[:, keep]
    beta = np.zeros(xr.shape[1])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(xr @ beta)))
        grad = xr.T @ (w * (y - p)) - ridge * beta
        hess = (xr * (w * p * (1.0 - p))[:, None]).T @ xr + ridge * np.eye(xr.shape[1])
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    full = np.zeros(x.shape[1])
    full[keep] = beta
    return full


class Design(BaseModel):
    """Battles as rows of a logistic regression: x, outcome y, weight w (counts; a tie is two half rows)."""

    model_config = {"arbitrary_types_allowed": True}
    models: list[str]
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    battle_of_row: np.ndarray  # which battle (or aggregated group) each row came from
    groups: int  # resampling units: aggregated groups, or battles with style control
    group_counts: np.ndarray  # battles per group


def _style_counts(conversation: list[dict]) -> np.ndarray:
    text = "\n".join(m.get("content") or "" for m in conversation if m.get("role") == "assistant")
    return np.array([len(text.split()), len(re.findall(r"^#{1,6} ", text, re.M)),
                     len(re.findall(r"^\s*(?:[-*+]|\d+\.) ", text, re.M)), len(re.findall(r"\*\*[^*\n]+\*\*|__[^_\n]+__", text))],
                    dtype=float)


def style_features(battles: Sequence[Battle]) -> np.ndarray:
    """(battles × 4) normalized differences (a − b) / (a + b), standardized per column as FastChat does."""
    a = np.stack([_style_counts(b.conversation_a) for b in battles])
    b = np.stack([_style_counts(b.conversation_b) for b in battles])
    total = a + b
    diff = np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)
    std = diff.std(axis=0)
    return (diff - diff.mean(axis=0)) / np.where(std > 0, std, 1.0)


def design(battles: Sequence[Battle], models: list[str], style: bool = False) -> Design:
    index = {m: i for i, m in enumerate(models)}
    log_base = math.log(BASE)
    if not style:
        # Aggregate: one group per (a, b, outcome); rows for a tie carry half weight each way.
        groups: dict[tuple[int, int, str], int] = {}
        for b in battles:
            key = (index[b.model_a], index[b.model_b], "tie" if b.winner.startswith("tie") else b.winner)
            groups[key] = groups.get(key, 0) + 1
        keys = list(groups)
        rows_x, rows_y, rows_w, rows_g = [], [], [], []
        for g, (ia, ib, outcome) in enumerate(keys):
            row = np.zeros(len(models))
            row[ia], row[ib] = log_base, -log_base
            parts = {"model_a": [(1.0, 1.0)], "model_b": [(0.0, 1.0)], "tie": [(1.0, 0.5), (0.0, 0.5)]}[outcome]
            for y, share in parts:
                rows_x.append(row)
                rows_y.append(y)
                rows_w.append(share)
                rows_g.append(g)
        counts = np.array([groups[k] for k in keys], dtype=float)
        return Design(models=models, x=np.array(rows_x), y=np.array(rows_y), w=np.array(rows_w),
                      battle_of_row=np.array(rows_g), groups=len(keys), group_counts=counts)
    features = style_features(battles)
    x = np.zeros((len(battles), len(models) + features.shape[1]))
    for i, b in enumerate(battles):
        x[i, index[b.model_a]], x[i, index[b.model_b]] = log_base, -log_base
    x[:, len(models):] = features
    scores = np.array([score_a(b) for b in battles])
    ties = scores == 0.5
    # A tie: the same row twice, y=1 and y=0, half weight each.
    xs = np.concatenate([x, x[ties]])
    ys = np.concatenate([np.where(ties, 1.0, scores), np.zeros(ties.sum())])
    ws = np.concatenate([np.where(ties, 0.5, 1.0), np.full(ties.sum(), 0.5)])
    gs = np.concatenate([np.arange(len(battles)), np.flatnonzero(ties)])
    return Design(models=models, x=xs, y=ys, w=ws, battle_of_row=gs, groups=len(battles),
                  group_counts=np.ones(len(battles)))


def bt_from_design(d: Design, group_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ratings per model, style coefficients) for the battles weighted by `group_weights` (counts)."""
    weights = d.group_counts if group_weights is None else group_weights
    beta = fit_logistic(d.x, d.y, d.w * weights[d.battle_of_row])
    m = len(d.models)
    model_beta = beta[:m] - beta[:m].mean()  # the likelihood does not see a common shift: centre exactly
    return SCALE * model_beta + INIT, beta[m:]


def bradley_terry(battles: Sequence[Battle], style: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    d = design(battles, models, style)
    ratings, style_coef = bt_from_design(d)
    return dict(zip(models, ratings.tolist())), dict(zip(STYLE_FEATURES, style_coef.tolist())) if style else {}


class Interval(BaseModel):
    rating: float
    lower: float
    upper: float


def bootstrap_bt(battles: Sequence[Battle], rounds: int = 1000, seed: int = 0, style: bool = False,
                 confidence: float = 0.95, progress=None) -> dict[str, Interval]:
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    d = design(battles, models, style)
    point, _ = bt_from_design(d)
    rng = np.random.default_rng(seed)
    total = int(d.group_counts.sum())
    samples = np.empty((rounds, len(models)))
    for r in range(rounds):
        # Resampling battles with replacement = multinomial counts over the groups.
        weights = rng.multinomial(total, d.group_counts / total).astype(float)
        samples[r], _ = bt_from_design(d, weights)
        if progress:
            progress()
    return _intervals(models, point, samples, confidence)


def bootstrap_elo(battles: Sequence[Battle], rounds: int = 100, seed: int = 0, confidence: float = 0.95,
                  progress=None) -> dict[str, Interval]:
    point = online_elo(battles)
    models = sorted(point)
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, len(models)))
    for r in range(rounds):
        picked = [battles[i] for i in rng.integers(0, len(battles), len(battles))]
        ratings = online_elo(picked)
        samples[r] = [ratings.get(m, INIT) for m in models]
        if progress:
            progress()
    return _intervals(models, np.array([point[m] for m in models]), samples, confidence)


def _intervals(models: list[str], point: np.ndarray, samples: np.ndarray, confidence: float) -> dict[str, Interval]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    lower = np.percentile(samples, tail, axis=0)
    upper = np.percentile(samples, 100.0 - tail, axis=0)
    return {m: Interval(rating=float(p), lower=float(lo), upper=float(hi))
            for m, p, lo, hi in zip(models, point, lower, upper)}


def pairwise_matrices(battles: Sequence[Battle], models: list[str]) -> tuple[dict, dict]:
    """(win rate of row over column with ties as half, battle counts), both {row: {column: value}}."""
    wins = {a: dict.fromkeys(models, 0.0) for a in models}
    count = {a: dict.fromkeys(models, 0) for a in models}
    for b in battles:
        s = score_a(b)
        wins[b.model_a][b.model_b] += s
        wins[b.model_b][b.model_a] += 1.0 - s
        count[b.model_a][b.model_b] += 1
        count[b.model_b][b.model_a] += 1
    rate = {a: {c: (wins[a][c] / count[a][c] if count[a][c] else None) for c in models if c != a} for a in models}
    return rate, count
