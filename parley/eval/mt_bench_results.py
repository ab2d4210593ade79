"""MT-bench results from judgment files in FastChat's format (`model_judgment/JUDGE_single.jsonl`).

Single grading: the mean score per model for the first turn, the second turn and both, as
FastChat's `show_result.py` computes them. A judgment recorded with score -1 (the judge's
reply could not be parsed, or the API failed) is left out of the means and counted as a
failure, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from parley.errors import ParleyError


class SingleScore(BaseModel):
    model: str
    first_turn: float | None
    second_turn: float | None
    average: float | None
    judgments: int  # valid ones
    failures: int  # score -1


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ParleyError(f"{path} does not exist")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ParleyError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return rows


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


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


HEADER = ["model", "first turn", "second turn", "average", "judgments", "failed judgments"]


def _rows(scores: list[SingleScore]) -> list[list[str]]:
    return [[s.model, _cell(s.first_turn), _cell(s.second_turn), _cell(s.average), str(s.judgments), str(s.failures)]
            for s in scores]


def to_markdown(scores: list[SingleScore]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(scores)]
    return "\n".join(lines) + "\n"


def to_csv(scores: list[SingleScore]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(_rows(scores))
    return out.getvalue()
