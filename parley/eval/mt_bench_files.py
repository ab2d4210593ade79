"""MT-bench's files, in FastChat's formats, and where they live.

A benchmark directory (`--data-dir`, default `$PARLEY_DATA_DIR/<bench>` or
`~/.local/share/parley/<bench>`) holds:

    question.jsonl                      {"question_id", "category", "turns": [...], "reference"?: [...]}
    judge_prompts.jsonl                 {"name", "type", "system_prompt", "prompt_template", "output_format", ...}
    reference_answer/MODEL.jsonl        answers used as references for math, reasoning and coding
    model_answer/MODEL.jsonl            {"question_id", "answer_id", "model_id", "choices": [{"index", "turns"}], "tstamp"}
    model_judgment/JUDGE_single.jsonl   {"question_id", "model", "judge": [JUDGE, PROMPT], "score", "turn", ...}
    model_judgment/JUDGE_pair.jsonl     {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", ...}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from parley.errors import ParleyError
from parley.jsonfiles import read_records

# Categories whose judge prompts carry a reference answer (FastChat's NEED_REF_CATS).
NEEDS_REFERENCE = frozenset({"math", "reasoning", "coding", "arena-hard-200"})


def data_home() -> Path:
    """$PARLEY_DATA_DIR, else $XDG_DATA_HOME/parley, else ~/.local/share/parley."""
    if env := os.environ.get("PARLEY_DATA_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "parley"


def bench_dir(data_dir: Path | None, bench: str = "mt_bench") -> Path:
    return data_dir if data_dir is not None else data_home() / bench


class Question(BaseModel):
    question_id: int | str
    category: str = "general"
    turns: list[str]
    reference: list[str] | None = None


class JudgePrompt(BaseModel):
    name: str
    type: str  # single | pairwise
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = "general"
    description: str = ""


def read_jsonl(path: Path) -> list[dict]:
    return read_records(path)


def append_jsonl(path: Path, row: dict) -> None:
    """One record per line, flushed at once: a run that is stopped keeps what it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def rewrite_sorted(path: Path, key) -> None:
    """Sort a JSON-lines file and keep the last record for each key (FastChat's reorg_answer_file)."""
    if not path.is_file():
        return
    latest = {key(row): row for row in read_jsonl(path)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for k in sorted(latest, key=lambda k: tuple((0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in k)):
            f.write(json.dumps(latest[k], ensure_ascii=False) + "\n")
    tmp.replace(path)


def _parse(model: type[BaseModel], row: dict, where: str):
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        raise ParleyError(f"{where}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def load_questions(path: Path, begin: int | None = None, end: int | None = None) -> list[Question]:
    """Questions in file order; `begin`/`end` slice them as FastChat's --question-begin/--question-end."""
    questions = [_parse(Question, row, f"{path} record {i + 1}") for i, row in enumerate(read_jsonl(path))]
    return questions[begin:end]


def load_judge_prompts(path: Path) -> dict[str, JudgePrompt]:
    return {p.name: p for p in (_parse(JudgePrompt, row, str(path)) for row in read_jsonl(path))}


def load_answers(directory: Path, models: Iterable[str] | None = None) -> dict[str, dict]:
    """{model: {question_id: answer record}} for model_answer/*.jsonl (or only `models`)."""
    if models is None:
        if not directory.is_dir():
            raise ParleyError(f"{directory} does not exist")
        models = sorted(p.stem for p in directory.glob("*.jsonl"))
    answers = {}
    for model in models:
        rows = read_jsonl(directory / f"{model}.jsonl")
        answers[model] = {row["question_id"]: row for row in rows}
    return answers
