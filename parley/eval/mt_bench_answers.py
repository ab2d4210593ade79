"""`parley eval mt-bench gen-answer`: a model's answers to every question, both turns.

As FastChat's gen_api_answer: the second turn sees the first question and answer; the
temperature depends on the category; the answer file is `model_answer/NAME.jsonl`, one record
per question, sorted by question id. Unlike FastChat, a question that already has its answers
is skipped (re-running resumes), and a question whose call failed after the retries is left
out of the file — counted and reported, so that the next run tries it again — instead of being
written with an error string as its answer; and a run killed while writing an answer leaves a torn last line
that the next run drops (with a warning) before answering that question again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from parley.eval.chat_client import ChatClient, ChatFailure, TokenCount
from parley.eval.mt_bench_files import (
    Question,
    append_jsonl,
    read_jsonl,
    repair_jsonl,
    rewrite_sorted,
)
from parley.eval.parallel import run_with_progress

# FastChat's temperature_config; any other category samples at 0.7.
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7


class AnswerRun(BaseModel):
    answer_file: str
    answered: int  # questions answered in this run
    skipped: int  # already in the file
    failed: dict[str, str]  # question id -> why
    usage: TokenCount


def temperature_for(question: Question, forced: float | None = None) -> float:
    if forced is not None:
        return forced
    return CATEGORY_TEMPERATURE.get(question.category, DEFAULT_TEMPERATURE)


async def answer_question(client: ChatClient, question: Question, num_choices: int, max_tokens: int,
                          temperature: float, system_prompt: str | None = None) -> list[dict]:
    choices = []
    for index in range(num_choices):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        turns = []
        for turn in question.turns:
            messages.append({"role": "user", "content": turn})
            reply = await client.complete(messages, temperature=temperature, max_tokens=max_tokens)
            messages.append({"role": "assistant", "content": reply})
            turns.append(reply)
        choices.append({"index": index, "turns": turns})
    return choices


def done_question_ids(answer_file: Path, num_choices: int) -> set:
    repair_jsonl(answer_file)  # a torn last line (a killed run) is dropped: that question is answered again
    if not answer_file.is_file():
        return set()
    return {row["question_id"] for row in read_jsonl(answer_file) if len(row.get("choices", [])) >= num_choices}


async def generate_answers(client: ChatClient, model_id: str, questions: list[Question], answer_file: Path, *,
                           parallel: int = 1, num_choices: int = 1, max_tokens: int = 1024,
                           force_temperature: float | None = None, system_prompt: str | None = None,
                           quiet: bool = False) -> AnswerRun:
    done = done_question_ids(answer_file, num_choices)
    todo = [q for q in questions if q.question_id not in done]
    failed: dict[str, str] = {}

    def job(question: Question):
        async def run() -> None:
            try:
                choices = await answer_question(client, question, num_choices, max_tokens,
                                                temperature_for(question, force_temperature), system_prompt)
            except ChatFailure as exc:
                failed[str(question.question_id)] = str(exc)
                return
            append_jsonl(answer_file, {"question_id": question.question_id, "answer_id": uuid.uuid4().hex,
                                       "model_id": model_id, "choices": choices, "tstamp": time.time()})
        return run

    await run_with_progress([job(q) for q in todo], parallel, f"answers of {model_id}", quiet=quiet)
    rewrite_sorted(answer_file, key=lambda row: (row["question_id"],))
    return AnswerRun(answer_file=str(answer_file), answered=len(todo) - len(failed), skipped=len(questions) - len(todo),
                     failed=failed, usage=client.usage)
