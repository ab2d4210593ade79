"""MT-bench end to end on the real stack: answers from the bundled model through a parley server, judged
by the same (weak) model, single and pairwise; and the judge's prompts, parsing and failure records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from parley.eval.mt_bench_files import (
    load_answers,
    load_judge_prompts,
    load_questions,
    read_jsonl,
)
from parley.eval.mt_bench_judge import (
    make_matches,
    parse_rating,
    parse_verdict,
    render_user_prompt,
)
from tests.conftest import SHARED_DATA, run_parley
from tests.servers import start_api, start_controller, start_worker

DATA = SHARED_DATA / "mt_bench"
needs_data = pytest.mark.skipif(not (DATA / "question.jsonl").is_file(), reason="../shared/data/mt_bench is absent")
MODEL = "smollm2"


def data_dir(tmp_path: Path, question_ids: list[int], answers: tuple[str, ...] = ()) -> Path:
    """A benchmark directory with a few of MT-bench's questions, its judge prompts and references."""
    d = tmp_path / "mt_bench"
    (d / "reference_answer").mkdir(parents=True)
    rows = [q for q in read_jsonl(DATA / "question.jsonl") if q["question_id"] in question_ids]
    (d / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in rows))
    shutil.copy(DATA / "judge_prompts.jsonl", d)
    shutil.copy(DATA / "reference_answer" / "gpt-4.jsonl", d / "reference_answer")
    for model in answers:
        (d / "model_answer").mkdir(exist_ok=True)
        shutil.copy(DATA / "model_answer" / f"{model}.jsonl", d / "model_answer")
    return d


def test_verdicts_and_ratings_parse_as_fastchat_does():
    assert parse_rating("The answer is fine. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[8.5]] and later [[2]]") == 8.5
    assert parse_rating("Rating: [6]") == 6.0  # FastChat's fallback pattern
    assert parse_rating("I would give it a seven.") == -1
    assert parse_rating("Rating: [[42]]") == -1  # off the 1-10 scale: a failure, not a score
    assert [parse_verdict(t) for t in ("[[A]]", "so [[B]].", "[[C]]", "A is better")] == ["A", "B", "tie", "error"]


@needs_data
def test_matches_use_fastchat_prompts_and_references():
    questions = load_questions(DATA / "question.jsonl")
    prompts = load_judge_prompts(DATA / "judge_prompts.jsonl")
    answers = load_answers(DATA / "model_answer", ["gpt-4", "llama-13b", "gpt-3.5-turbo"])
    references = {r["question_id"]: r for r in read_jsonl(DATA / "reference_answer" / "gpt-4.jsonl")}

    single, plan = make_matches("single", questions, answers, prompts, references)
    assert len(single) == 3 * 80 * 2 and not plan.missing_answers and not plan.missing_references
    names = {(m.question.category, m.turn): m.prompt.name for m in single}
    assert names[("writing", 1)] == "single-v1" and names[("writing", 2)] == "single-v1-multi-turn"
    assert names[("math", 1)] == "single-math-v1" and names[("coding", 2)] == "single-math-v1-multi-turn"
    math_turn_2 = next(m for m in single if m.question.question_id == 111 and m.turn == 2)
    text = render_user_prompt(math_turn_2, math_turn_2.answers)
    assert references[111]["choices"][0]["turns"][1] in text and math_turn_2.question.turns[1] in text

    baseline, _ = make_matches("pairwise-baseline", questions, answers, prompts, references, baseline="gpt-3.5-turbo")
    assert {m.models for m in baseline} == {("gpt-4", "gpt-3.5-turbo"), ("llama-13b", "gpt-3.5-turbo")}
    every, _ = make_matches("pairwise-all", questions, answers, prompts, references)
    assert len(every) == 3 * 80 * 2 and {m.prompt.name for m in every} == {
        "pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn"}


@needs_data
def test_an_unreachable_judge_is_recorded_as_failures_not_dropped(tmp_path):
    d = data_dir(tmp_path, [81, 111], answers=("llama-13b",))
    result = run_parley("eval", "mt-bench", "judge", "--data-dir", str(d), "--judge-model", "nobody",
                        "--judge-base-url", "http://127.0.0.1:9/v1", "--retries", "0", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "judged 4, already done 0, failed 4" in result.stdout
    rows = read_jsonl(d / "model_judgment" / "nobody_single.jsonl")
    assert len(rows) == 4 and all(r["score"] == -1 and r["judgment"].startswith("$ERROR$") for r in rows)
    shown = run_parley("eval", "mt-bench", "show", "--data-dir", str(d), "--judge-model", "nobody", timeout=60)
    assert "4 judgment(s) failed" in shown.stdout


@pytest.fixture(scope="module")
def parley_server():
    controller = start_controller()
    servers = [controller]
    try:
        servers.append(start_worker(controller, "--engine", "llamacpp", names=MODEL))
        api = start_api(controller)
        servers.append(api)
        yield api.url + "/v1"
    finally:
        for server in reversed(servers):
            server.stop()


@needs_data
def test_answers_judgments_and_table_for_the_bundled_model(parley_server, tmp_path):
    d = data_dir(tmp_path, [81, 111])
    gen = ["eval", "mt-bench", "gen-answer", "--data-dir", str(d), "--model", MODEL, "--base-url", parley_server,
           "--parallel", "2", "--max-tokens", "48"]
    result = run_parley(*gen, timeout=300)
    assert result.returncode == 0, result.stderr
    answers = read_jsonl(d / "model_answer" / f"{MODEL}.jsonl")
    assert [a["question_id"] for a in answers] == [81, 111] and all(a["model_id"] == MODEL for a in answers)
    assert all(len(a["choices"][0]["turns"]) == 2 and all(t.strip() for t in a["choices"][0]["turns"]) for a in answers)
    again = run_parley(*gen, timeout=120)
    assert "answered 0, already done 2" in again.stdout and read_jsonl(d / "model_answer" / f"{MODEL}.jsonl") == answers

    judge = ["eval", "mt-bench", "judge", "--data-dir", str(d), "--judge-model", MODEL, "--judge-base-url",
             parley_server, "--parallel", "4", "--judge-max-tokens", "64"]
    result = run_parley(*judge, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "judged 4, already done 0" in result.stdout and "judge tokens: 4 requests" in result.stdout
    rows = read_jsonl(d / "model_judgment" / f"{MODEL}_single.jsonl")
    assert sorted((r["question_id"], r["turn"]) for r in rows) == [(81, 1), (81, 2), (111, 1), (111, 2)]
    assert all(r["score"] == -1 or 1 <= r["score"] <= 10 for r in rows) and all(r["judgment"] for r in rows)
    assert {tuple(r["judge"]) for r in rows} == {(MODEL, "single-v1"), (MODEL, "single-v1-multi-turn"),
                                                 (MODEL, "single-math-v1"), (MODEL, "single-math-v1-multi-turn")}
    failed = sum(r["score"] == -1 for r in rows)
    assert f"failed {failed}" in result.stdout
    assert "judged 0, already done 4" in run_parley(*judge, timeout=120).stdout

    radar = tmp_path / "radar.png"
    shown = run_parley("eval", "mt-bench", "show", "--data-dir", str(d), "--judge-model", MODEL, "--radar", str(radar),
                       "--csv", str(tmp_path / "t.csv"), timeout=120)
    if failed == 4:
        assert shown.returncode == 0 and "4 judgment(s) failed" in shown.stdout
    else:
        assert shown.returncode == 0, shown.stderr
        assert radar.read_bytes()[:4] == b"\x89PNG"
    csv_row = (tmp_path / "t.csv").read_text().splitlines()[1].split(",")
    assert csv_row[0] == MODEL and int(csv_row[4]) == 4 - failed and int(csv_row[5]) == failed


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
@needs_data
def test_published_answers_judged_pairwise_with_swapped_positions(parley_server, tmp_path):
    d = data_dir(tmp_path, [82, 101], answers=("gpt-4", "llama-13b"))
    result = run_parley("eval", "mt-bench", "judge", "--data-dir", str(d), "--judge-model", MODEL, "--judge-base-url",
                        parley_server, "--mode", "pairwise-all", "--parallel", "4", "--judge-max-tokens", "48",
                        timeout=300)
    assert result.returncode == 0, result.stderr
    assert "judge tokens: 8 requests" in result.stdout  # 2 questions x 2 turns x 2 orders
    rows = read_jsonl(d / "model_judgment" / f"{MODEL}_pair.jsonl")
    assert len(rows) == 4 and {(r["model_1"], r["model_2"]) for r in rows} == {("gpt-4", "llama-13b")}
    for r in rows:
        assert {r["g1_winner"], r["g2_winner"]} <= {"model_1", "model_2", "tie", "error"}
        # The second judgment saw the answers the other way round.
        assert r["g1_user_prompt"] != r["g2_user_prompt"]
        first_a = r["g1_user_prompt"].index("Assistant A")
        assert r["g1_user_prompt"].count("Assistant A") == r["g2_user_prompt"].count("Assistant A") and first_a >= 0

    shown = run_parley("eval", "mt-bench", "show", "--data-dir", str(d), "--judge-model", MODEL, "--mode",
                       "pairwise-all", "--csv", str(tmp_path / "pair.csv"), timeout=60)
    assert shown.returncode == 0, shown.stderr
    errors = sum("error" in (r["g1_winner"], r["g2_winner"]) for r in rows)
    assert (f"{errors} pair(s) with a failed verdict" in shown.stdout) == (errors > 0)
    lines = (tmp_path / "pair.csv").read_text().splitlines()
    assert lines[0] == "model,win,loss,tie,win rate,loss rate,adjusted win rate,failed judgments"
    for line in lines[1:]:
        cells = line.split(",")
        assert int(cells[1]) + int(cells[2]) + int(cells[3]) + int(cells[7]) == 4
