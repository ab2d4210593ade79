"""`parley eval mt-bench judge`: grade answers with an LLM judge, as FastChat's gen_judgment does.

Single grading scores each turn of each answer 1–10 (`[[rating]]`); pairwise grading compares
two models' answers to the same question twice, the second time with the positions swapped, and
records both verdicts (a disagreement counts as a tie when the table is made). Math, reasoning
and coding questions are judged against a reference answer. Prompts, verdict parsing and the
judgment records are FastChat's, so its tools read our files and ours read its.

Unlike FastChat: any OpenAI-compatible judge; no interactive prompt; re-running skips what is
judged (a torn last line left by a killed run is dropped, with a warning, and that judgment done again); a judge
call that fails after the retries is recorded as a failure (score -1, winner "error") with the reason, and
failures are counted in the summary, never dropped.
"""

from __future__ import annotations

import ast
import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from parley.errors import ParleyError
from parley.eval.chat_client import ChatClient, ChatFailure, TokenCount
from parley.eval.mt_bench_files import (
    NEEDS_REFERENCE,
    JudgePrompt,
    Question,
    append_jsonl,
    read_jsonl,
    repair_jsonl,
    rewrite_sorted,
)
from parley.eval.parallel import run_with_progress

MODES = ("single", "pairwise-baseline", "pairwise-all")
PROMPT_NAMES = {  # (mode kind, needs a reference, multi-turn) -> FastChat's judge prompt
    ("single", False, False): "single-v1", ("single", True, False): "single-math-v1",
    ("single", False, True): "single-v1-multi-turn", ("single", True, True): "single-math-v1-multi-turn",
    ("pair", False, False): "pair-v2", ("pair", True, False): "pair-math-v1",
    ("pair", False, True): "pair-v2-multi-turn", ("pair", True, True): "pair-math-v1-multi-turn",
}
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
ERROR = "$ERROR$"


def judgment_file(data_dir: Path, judge_model: str, mode: str) -> Path:
    kind = "single" if mode == "single" else "pair"
    return data_dir / "model_judgment" / f"{judge_model.replace('/', '--')}_{kind}.jsonl"


def parse_rating(judgment: str) -> float:
    """The `[[rating]]` (or, failing that, `[rating]`) in a judgment; -1 when there is none or it is off the 1–10 scale."""
    match = RATING.search(judgment) or RATING_FALLBACK.search(judgment)
    if not match:
        return -1.0
    rating = float(ast.literal_eval(match.group(1)))
    return rating if 1.0 <= rating <= 10.0 else -1.0


def parse_verdict(judgment: str) -> str:
    """FastChat's rule: the first of [[A]], [[B]], [[C]] found, in that order of preference."""
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return "error"


@dataclass
class Match:
    question: Question
    models: tuple[str, ...]  # one for single grading, two for pairwise
    answers: tuple[dict, ...]
    prompt: JudgePrompt
    reference: list[str] | None
    multi_turn: bool

    @property
    def turn(self) -> int:
        return 2 if self.multi_turn else 1

    def key(self) -> tuple:
        return (self.question.question_id, *self.models, self.turn)


def _turns(answer: dict) -> list[str]:
    return answer["choices"][0]["turns"]


def render_user_prompt(match: Match, answers: tuple[dict, ...]) -> str:
    """The judge's user message: FastChat's template filled with the question, answers and reference."""
    q = match.question.turns
    fields: dict[str, str] = {}
    if match.reference is not None:
        fields["ref_answer_1"] = match.reference[0]
        if match.multi_turn:
            fields["ref_answer_2"] = match.reference[1]
    if len(answers) == 1:
        a = _turns(answers[0])
        if match.multi_turn:
            fields.update(question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1])
        else:
            fields.update(question=q[0], answer=a[0])
    else:
        a, b = _turns(answers[0]), _turns(answers[1])
        if match.multi_turn:
            fields.update(question_1=q[0], question_2=q[1], answer_a_1=a[0], answer_a_2=a[1], answer_b_1=b[0],
                          answer_b_2=b[1])
        else:
            fields.update(question=q[0], answer_a=a[0], answer_b=b[0])
    return match.prompt.prompt_template.format(**fields)


class Judge:
    def __init__(self, client: ChatClient, max_tokens: int = 2048):
        self.client = client
        self.max_tokens = max_tokens

    async def ask(self, match: Match, answers: tuple[dict, ...]) -> tuple[str, str]:
        """(user prompt, judgment); the judgment is "$ERROR$: why" when the call failed."""
        user_prompt = render_user_prompt(match, answers)
        messages = [{"role": "system", "content": match.prompt.system_prompt}, {"role": "user", "content": user_prompt}]
        try:
            judgment = await self.client.complete(messages, temperature=0.0, max_tokens=self.max_tokens)
        except ChatFailure as exc:
            judgment = f"{ERROR}: {exc}"
        return user_prompt, judgment

    async def single(self, match: Match) -> dict:
        user_prompt, judgment = await self.ask(match, match.answers)
        score = -1.0 if judgment.startswith(ERROR) else parse_rating(judgment)
        return {"question_id": match.question.question_id, "model": match.models[0],
                "judge": [self.client.model, match.prompt.name], "user_prompt": user_prompt, "judgment": judgment,
                "score": score, "turn": match.turn, "tstamp": time.time()}

    async def pair(self, match: Match) -> dict:
        g1_prompt, g1 = await self.ask(match, match.answers)
        g2_prompt, g2 = await self.ask(match, match.answers[::-1])
        g1_winner = {"A": "model_1", "B": "model_2"}.get(parse_verdict(g1), parse_verdict(g1))
        g2_winner = {"A": "model_2", "B": "model_1"}.get(parse_verdict(g2), parse_verdict(g2))
        return {"question_id": match.question.question_id, "model_1": match.models[0], "model_2": match.models[1],
                "g1_winner": g1_winner, "g2_winner": g2_winner, "judge": [self.client.model, match.prompt.name],
                "g1_user_prompt": g1_prompt, "g1_judgment": g1, "g2_user_prompt": g2_prompt, "g2_judgment": g2,
                "turn": match.turn, "tstamp": time.time()}


class MatchPlan(BaseModel):
    matches: int
    missing_answers: list[str]  # "model: question ids" without an answer, not judged
    missing_references: list[str]  # question ids judged without the reference they should have


def make_matches(mode: str, questions: list[Question], answers: dict[str, dict], prompts: dict[str, JudgePrompt],
                 references: dict, baseline: str | None = None) -> tuple[list[Match], MatchPlan]:
    """Every (question, model or pair of models, turn) to judge, with its prompt and reference."""
    if mode not in MODES:
        raise ParleyError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    models = sorted(answers)
    if mode == "single":
        groups = [(m,) for m in models]
    elif mode == "pairwise-baseline":
        if not baseline or baseline not in answers:
            raise ParleyError(f"the baseline model {baseline!r} has no answers (model_answer/{baseline}.jsonl)")
        groups = [(m, baseline) for m in models if m != baseline]
    else:
        groups = list(itertools.combinations(models, 2))
    if not groups:
        raise ParleyError(f"nothing to judge in mode {mode}: models with answers: {', '.join(models) or 'none'}")
    kind = "single" if mode == "single" else "pair"
    matches: list[Match] = []
    missing: dict[str, list[str]] = {}
    no_reference: list[str] = []
    for q in questions:
        wants_reference = q.category in NEEDS_REFERENCE
        reference = None
        if wants_reference:
            record = references.get(q.question_id)
            reference = _turns(record) if record else q.reference
            if not reference:
                no_reference.append(str(q.question_id))
        for group in groups:
            found = tuple(answers[m].get(q.question_id) for m in group)
            absent = [m for m, a in zip(group, found) if a is None]
            if absent:
                for m in absent:
                    missing.setdefault(m, []).append(str(q.question_id))
                continue
            for multi_turn in (False, True):
                if multi_turn and (len(q.turns) < 2 or any(len(_turns(a)) < 2 for a in found)):
                    continue
                has_reference = bool(reference) and (not multi_turn or len(reference) >= 2)
                name = PROMPT_NAMES[(kind, has_reference, multi_turn)]
                if name not in prompts:
                    raise ParleyError(f"judge prompt {name!r} is not in the judge prompt file")
                matches.append(Match(q, group, found, prompts[name], reference if has_reference else None, multi_turn))
    plan = MatchPlan(matches=len(matches), missing_answers=[f"{m}: {', '.join(ids)}" for m, ids in missing.items()],
                     missing_references=sorted(set(no_reference)))
    return matches, plan


def _record_key(row: dict) -> tuple:
    if "model" in row:
        return (row["question_id"], row["model"], row["turn"])
    return (row["question_id"], row["model_1"], row["model_2"], row["turn"])


def _failed(row: dict) -> bool:
    return row.get("score") == -1 or "error" in (row.get("g1_winner"), row.get("g2_winner"))


class JudgeRun(BaseModel):
    output_file: str
    judged: int
    skipped: int  # judged by an earlier run
    failed: int  # of this run: score -1 or winner "error"
    usage: TokenCount


async def run_judgments(judge: Judge, matches: list[Match], output_file: Path, *, parallel: int = 1,
                        retry_failed: bool = False, quiet: bool = False) -> JudgeRun:
    repair_jsonl(output_file)  # a torn last line (a killed run) is dropped: that judgment is done again
    previous = read_jsonl(output_file) if output_file.is_file() else []
    done = {_record_key(row) for row in previous if not (retry_failed and _failed(row))}
    todo = [m for m in matches if m.key() not in done]
    failed = 0

    def job(match: Match):
        async def run() -> None:
            nonlocal failed
            record = await (judge.single(match) if len(match.models) == 1 else judge.pair(match))
            failed += _failed(record)
            append_jsonl(output_file, record)
        return run

    await run_with_progress([job(m) for m in todo], parallel, f"judging with {judge.client.model}", quiet=quiet)
    rewrite_sorted(output_file, key=_record_key)
    return JudgeRun(output_file=str(output_file), judged=len(todo), skipped=len(matches) - len(todo), failed=failed,
                    usage=judge.client.usage)
