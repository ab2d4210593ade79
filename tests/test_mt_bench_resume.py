"""MT-bench output files after a run was killed mid-write: the torn last line is dropped (with a warning) on
resume and its record done again, never a crash; the files are valid JSON lines afterwards."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from parley.eval.chat_client import TokenCount
from parley.eval.mt_bench_answers import generate_answers
from parley.eval.mt_bench_files import JudgePrompt, Question, load_answers, read_jsonl
from parley.eval.mt_bench_judge import Judge, make_matches, run_judgments
from tests.conftest import SHARED_DATA, run_parley

DATA = SHARED_DATA / "mt_bench"
needs_data = pytest.mark.skipif(not (DATA / "question.jsonl").is_file(), reason="../shared/data/mt_bench is absent")
QUESTIONS = [Question(question_id=i, category="writing", turns=[f"Question {i}?", f"And then {i}?"]) for i in (1, 2, 3)]
PROMPTS = {name: JudgePrompt(name=name, type="single", system_prompt="Judge.", prompt_template=template,
                             output_format="[[rating]]")
           for name, template in (("single-v1", "Q: {question} A: {answer}"),
                                  ("single-v1-multi-turn", "{question_1} {answer_1} {question_2} {answer_2}"))}


class ScriptedClient:
    """What generate_answers and Judge use of a ChatClient, answering at once and counting the calls."""

    def __init__(self, reply: str, model: str = "scripted"):
        self.model = model
        self.reply = reply
        self.usage = TokenCount()
        self.prompts: list[str] = []

    async def complete(self, messages: list[dict], temperature: float, max_tokens: int) -> str:
        self.usage.requests += 1
        self.prompts.append(messages[-1]["content"])
        return self.reply


def torn(path: Path, rows: list[dict], partial: dict) -> None:
    """Complete lines for `rows`, then the first half of `partial`'s line, without a newline: a killed writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(partial)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + line[: len(line) // 2], encoding="utf-8")


def valid_lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def answer(question_id: int, text: str = "old") -> dict:
    return {"question_id": question_id, "answer_id": f"a{question_id}", "model_id": "m",
            "choices": [{"index": 0, "turns": [text, text]}], "tstamp": 1.0}


async def test_gen_answer_resumes_over_a_torn_last_line(tmp_path, caplog):
    answers = tmp_path / "model_answer" / "m.jsonl"
    torn(answers, [answer(1)], partial=answer(2))
    client = ScriptedClient("new")
    with caplog.at_level(logging.WARNING):
        run = await generate_answers(client, "m", QUESTIONS, answers, quiet=True)
    assert run.skipped == 1 and run.answered == 2 and not run.failed
    assert client.usage.requests == 2 * 2  # questions 2 (the torn one) and 3, two turns each
    rows = valid_lines(answers)
    assert [r["question_id"] for r in rows] == [1, 2, 3]
    assert rows[0]["choices"][0]["turns"] == ["old", "old"] and rows[1]["choices"][0]["turns"] == ["new", "new"]
    assert any("torn" in r.getMessage() and str(answers) in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


async def test_judge_resumes_over_a_torn_last_line(tmp_path, caplog):
    answers = {"m": {q.question_id: answer(q.question_id) for q in QUESTIONS}}
    matches, plan = make_matches("single", QUESTIONS, answers, PROMPTS, {})
    assert plan.matches == 6
    output = tmp_path / "model_judgment" / "judge_single.jsonl"
    first = ScriptedClient("Fine. [[7]]", model="judge")
    await run_judgments(Judge(first), matches[:3], output, quiet=True)
    done = read_jsonl(output)
    torn(output, done[:2], partial=done[2])  # the third judgment was being written when the run was killed
    again = ScriptedClient("Good. [[9]]", model="judge")
    with caplog.at_level(logging.WARNING):
        run = await run_judgments(Judge(again), matches, output, quiet=True)
    assert run.skipped == 2 and run.judged == 4 and run.failed == 0
    rows = valid_lines(output)
    keys = [(r["question_id"], r["turn"]) for r in rows]
    assert len(rows) == 6 and len(set(keys)) == 6
    redone = {(m.question.question_id, m.turn) for m in matches[2:]}
    assert {(r["question_id"], r["turn"]) for r in rows if r["score"] == 9} == redone
    assert any("torn" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_torn_answer_file_is_read_without_its_torn_line(tmp_path, caplog):
    """The judge reads answers of a gen-answer run that was killed: the complete answers, not a crash."""
    directory = tmp_path / "model_answer"
    torn(directory / "m.jsonl", [answer(1), answer(2)], partial=answer(3))
    with caplog.at_level(logging.WARNING):
        answers = load_answers(directory)
    assert sorted(answers["m"]) == [1, 2]
    assert any("torn" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    """Killed between the record and its newline: the record stays, and the next one starts on a line of its own."""
    answers = tmp_path / "model_answer" / "m.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text(json.dumps(answer(1)) + "\n" + json.dumps(answer(2)), encoding="utf-8")
    client = ScriptedClient("new")
    run = await generate_answers(client, "m", QUESTIONS, answers, quiet=True)
    assert run.skipped == 2 and run.answered == 1 and client.usage.requests == 2
    assert [(r["question_id"], r["choices"][0]["turns"][0]) for r in valid_lines(answers)] == [
        (1, "old"), (2, "old"), (3, "new")]


@needs_data
def test_the_judge_command_resumes_over_a_torn_judgment_file(tmp_path):
    d = tmp_path / "mt_bench"
    (d / "model_answer").mkdir(parents=True)
    rows = [q for q in read_jsonl(DATA / "question.jsonl") if q["question_id"] in (81, 82)]
    (d / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in rows))
    (d / "judge_prompts.jsonl").write_text((DATA / "judge_prompts.jsonl").read_text())
    (d / "model_answer" / "m.jsonl").write_text("".join(json.dumps(answer(q["question_id"])) + "\n" for q in rows))
    output = d / "model_judgment" / "nobody_single.jsonl"
    judged = {"model": "m", "judge": ["nobody", "single-v1"], "user_prompt": "", "judgment": "[[5]]", "score": 5.0,
              "tstamp": 1.0}
    torn(output, [{**judged, "question_id": 81, "turn": 1}], partial={**judged, "question_id": 81, "turn": 2})
    result = run_parley("eval", "mt-bench", "judge", "--data-dir", str(d), "--judge-model", "nobody",
                        "--judge-base-url", "http://127.0.0.1:9/v1", "--retries", "0", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "judged 3, already done 1, failed 3" in result.stdout
    assert "torn" in result.stderr
    rows = valid_lines(output)
    assert sorted((r["question_id"], r["turn"]) for r in rows) == [(81, 1), (81, 2), (82, 1), (82, 2)]
