"""MT-bench results from judgment files in FastChat's format (`model_judgment/JUDGE_*.jsonl`).

Single grading: the mean score per model for the first turn, the second turn and both, as
FastChat's `show_result.py` computes them. A judgment recorded with score -1 (the judge's
reply could not be parsed, or the API failed) is left out of the means and counted as a
failure, never dropped silently.

Pairwise grading: wins, losses and ties per model, where a pair judged twice (positions
swapped) counts as a win only when both verdicts agree, and as a tie otherwise; the adjusted
win rate counts a tie as half a win. Pairs with a failed verdict are counted, not scored.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel


class SingleScore(BaseModel):
    model: str
    first_turn: float | None
    second_turn: float | None
    average: float | None
    judgments: int  # valid ones
    failures: int  # score -1


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def single_scores(judgments: Iterable[dict], models: list[str] | None = None) -> list[SingleScore]:
    """One row per model, best average first."""
    turns: dict[str, dict[int, list[float]]] = defaultdict(lambda: {1: [], 2: []})
    failures: dict[str, int] = defaultdict(int)
    for j in judgments:
        model = j["model"]
        if models and model not in models:
            continue
        if j["score"] == -1:
            failures[model] += 1
            turns[model]  # the model is listed even when every judgment failed
            continue
        turns[model][int(j["turn"])].append(float(j["score"]))
    rows = [SingleScore(model=m, first_turn=_mean(t[1]), second_turn=_mean(t[2]), average=_mean(t[1] + t[2]),
                        judgments=len(t[1]) + len(t[2]), failures=failures[m]) for m, t in turns.items()]
    return sorted(rows, key=lambda r: (r.average is None, -(r.average or 0.0), r.model))


def category_scores(judgments: Iterable[dict], questions: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Mean score per model and question category (both turns), for the radar chart."""
    category = {q["question_id"]: q["category"] for q in questions}
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        if j["score"] != -1 and j["question_id"] in category:
            sums[j["model"]][category[j["question_id"]]].append(float(j["score"]))
    return {m: {c: sum(v) / len(v) for c, v in cats.items()} for m, cats in sums.items()}


class PairScore(BaseModel):
    model: str
    win: int
    loss: int
    tie: int
    failures: int  # pairs with a failed verdict, left out of the counts

    @property
    def battles(self) -> int:
        return self.win + self.loss + self.tie

    @property
    def win_rate(self) -> float | None:
        return self.win / self.battles if self.battles else None

    @property
    def loss_rate(self) -> float | None:
        return self.loss / self.battles if self.battles else None

    @property
    def win_rate_adjusted(self) -> float | None:
        return (self.win + 0.5 * self.tie) / self.battles if self.battles else None


def pair_scores(judgments: Iterable[dict], models: list[str] | None = None,
                baseline: str | None = None) -> tuple[list[PairScore], int]:
    """(one row per model (the baseline left out), best adjusted win rate first; the number of pairs with a failed
    verdict). FastChat's display_result_pairwise, except that failures are counted instead of dropped."""
    failed_pairs = 0
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "loss": 0, "tie": 0, "failures": 0})
    for j in judgments:
        m1, m2 = j["model_1"], j["model_2"]
        if models and m1 not in models:
            continue
        if baseline and baseline not in (m1, m2):
            continue
        if "error" in (j["g1_winner"], j["g2_winner"]):
            failed_pairs += 1
            counts[m1]["failures"] += 1
            counts[m2]["failures"] += 1
        elif j["g1_winner"] == "tie" or j["g1_winner"] != j["g2_winner"]:
            counts[m1]["tie"] += 1
            counts[m2]["tie"] += 1
        else:
            winner, loser = (m1, m2) if j["g1_winner"] == "model_1" else (m2, m1)
            counts[winner]["win"] += 1
            counts[loser]["loss"] += 1
    rows = [PairScore(model=m, **c) for m, c in counts.items() if m != baseline]
    return sorted(rows, key=lambda r: (r.win_rate_adjusted is None, -(r.win_rate_adjusted or 0.0), r.model)), failed_pairs


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


SINGLE_HEADER = ["model", "first turn", "second turn", "average", "judgments", "failed judgments"]
PAIR_HEADER = ["model", "win", "loss", "tie", "win rate", "loss rate", "adjusted win rate", "failed judgments"]


def table_rows(scores: list[SingleScore] | list[PairScore]) -> tuple[list[str], list[list[str]]]:
    if scores and isinstance(scores[0], PairScore):
        return PAIR_HEADER, [[s.model, str(s.win), str(s.loss), str(s.tie), _cell(s.win_rate, 4), _cell(s.loss_rate, 4),
                              _cell(s.win_rate_adjusted, 4), str(s.failures)] for s in scores]
    return SINGLE_HEADER, [[s.model, _cell(s.first_turn), _cell(s.second_turn), _cell(s.average), str(s.judgments),
                            str(s.failures)] for s in scores]


def to_markdown(scores: list[SingleScore] | list[PairScore]) -> str:
    header, rows = table_rows(scores)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(scores: list[SingleScore] | list[PairScore]) -> str:
    header, rows = table_rows(scores)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


CATEGORY_ORDER = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


def radar_chart(per_category: dict[str, dict[str, float]], path: Path, title: str = "MT-bench") -> Path:
    """Per-category scores of each model on a radar (polar) chart, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = {c for cats in per_category.values() for c in cats}
    categories = [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER))
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(7, 7), subplot_kw={"polar": True})
    for model, cats in per_category.items():
        values = [cats.get(c, 0.0) for c in categories]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=1.8, label=model)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.06)
    ax.set_xticks(angles)
    ax.set_xticklabels([c.upper() if c == "stem" else c.capitalize() for c in categories])
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.set_title(title, pad=24)
    ax.legend(loc="upper right", bbox_to_anchor=(1.32, 1.1), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
