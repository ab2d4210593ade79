"""MT-bench's files, in FastChat's formats, and where they live.

A benchmark directory (`--data-dir`, default `$PARLEY_DATA_DIR/<bench>` or
`~/.local/share/parley/<bench>`) holds:

    question.jsonl                      {"question_id", "category", "turns": [...], "reference"?: [...]}
    judge_prompts.jsonl                 {"name", "type", "system_prompt", "prompt_template", "output_format", ...}
    reference_answer/MODEL.jsonl        answers used as references for math, reasoning and coding
    model_answer/MODEL.jsonl            {"question_id", "answer_id", "model_id", "choices": [{"index", "turns"}], "tstamp"}
    model_judgment/JUDGE_single.jsonl   {"question_id", "model", "judge": [JUDGE, PROMPT], "score", "turn", ...}
    model_judgment/JUDGE_pair.jsonl     {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", ...}

Records are appended one line at a time as they are done, so a run that is killed keeps what it finished, and may
leave a torn last line (a partial record without its newline): a resumed run drops it, with a warning, and does
that record again (`repair_jsonl`); readers of another run's file leave it out (`read_complete_jsonl`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from parley.errors import ParleyError
from parley.eval.atomic import write_text_atomic
from parley.jsonfiles import parse_json_lines, read_records
from parley.paths import data_home

log = logging.getLogger(__name__)

# Categories whose judge prompts carry a reference answer (FastChat's NEED_REF_CATS).
NEEDS_REFERENCE = frozenset({"math", "reasoning", "coding", "arena-hard-200"})


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


def _torn_tail(data: bytes) -> int | None:
    """Where a JSON-lines file's partial last line starts (no newline, not JSON: its writer was stopped mid-line);
    None when the file ends with a whole line (or is a JSON list, or empty)."""
    if not data or data.endswith(b"\n") or data.lstrip().startswith(b"["):
        return None
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if not tail.strip():
        return None
    try:
        json.loads(tail)
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError for a character cut in two
        return start
    return None  # a whole record, only its newline is missing


def repair_jsonl(path: Path) -> int:
    """Ready a JSON-lines file for appending after a run that was killed while writing it: a torn last line is
    dropped, with a warning, so that its record is done again; a whole last record missing its newline gets one.
    Returns the number of lines dropped (0 or 1)."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n") or data.lstrip().startswith(b"["):
        return 0
    start = _torn_tail(data)
    with path.open("r+b") as f:
        if start is None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return 0
        f.truncate(start)
    log.warning("%s: dropped a torn last line (%d bytes without a newline: a run was stopped while writing it); "
                "its record is done again", path, len(data) - start)
    return 1


def read_complete_jsonl(path: Path) -> list[dict]:
    """`read_jsonl` less a torn last line (its writer was stopped, or is still writing it), with a warning; the
    file is left as it is."""
    data = path.read_bytes() if path.is_file() else b""
    start = _torn_tail(data)
    if start is None:
        if data.lstrip().startswith(b"["):
            return read_jsonl(path)
        return parse_json_lines(data.decode("utf-8"), path)
    log.warning("%s: left out a torn last line (%d bytes without a newline: a run was stopped while writing it, "
                "or is writing it now)", path, len(data) - start)
    return parse_json_lines(data[:start].decode("utf-8"), path)


def rewrite_sorted(path: Path, key) -> None:
    """Sort a JSON-lines file and keep the last record for each key (FastChat's reorg_answer_file); atomically."""
    if not path.is_file():
        return
    latest = {key(row): row for row in read_jsonl(path)}
    order = sorted(latest, key=lambda k: tuple((0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in k))
    write_text_atomic(path, "".join(json.dumps(latest[k], ensure_ascii=False) + "\n" for k in order))


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
        rows = read_complete_jsonl(directory / f"{model}.jsonl")
        answers[model] = {row["question_id"]: row for row in rows}
    return answers
