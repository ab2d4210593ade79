"""`parley eval mt-bench show`: FastChat's results table from judgment files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.errors import ParleyError
from parley.eval.mt_bench_files import read_jsonl
from parley.eval.mt_bench_results import pair_scores, single_scores, to_csv, to_markdown
from tests.conftest import run_parley

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mt_bench"
PUBLISHED = {  # MT-bench leaderboard, GPT-4 as judge: average (first turn, second turn)
    "gpt-4": (8.99, 8.96, 9.03), "gpt-3.5-turbo": (7.94, 8.07, 7.81), "claude-v1": (7.90, 8.15, 7.65),
    "vicuna-13b-v1.3": (6.39, 6.81, 5.96), "llama-13b": (2.61, 3.26, 1.95),
}


@pytest.mark.skipif(not (DATA / "model_judgment" / "gpt-4_single.jsonl").is_file(), reason="../shared/data is absent")
def test_the_published_gpt4_judgments_give_the_published_scores(tmp_path):
    scores = {s.model: s for s in single_scores(read_jsonl(DATA / "model_judgment" / "gpt-4_single.jsonl"))}
    for model, (average, first, second) in PUBLISHED.items():
        s = scores[model]
        assert (round(s.average, 2), round(s.first_turn, 2), round(s.second_turn, 2)) == (average, first, second), model
    ordered = list(scores)
    assert ordered[0] == "gpt-4" and ordered.index("gpt-3.5-turbo") < ordered.index("vicuna-13b-v1.3") < ordered.index("llama-13b")

    csv_file = tmp_path / "scores.csv"
    radar = tmp_path / "radar.png"
    result = run_parley("eval", "mt-bench", "show", "--data-dir", str(DATA), "--model-list", "gpt-4", "llama-13b",
                        "--csv", str(csv_file), "--radar", str(radar), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "8.99" in result.stdout and "2.61" in result.stdout and "vicuna" not in result.stdout
    assert csv_file.read_text().splitlines()[1] == "gpt-4,8.96,9.03,8.99,160,0"
    assert radar.read_bytes()[:4] == b"\x89PNG" and radar.stat().st_size > 20_000


def test_failed_judgments_are_counted_not_averaged(tmp_path):
    rows = [{"question_id": 1, "model": "m", "score": 8, "turn": 1}, {"question_id": 1, "model": "m", "score": -1, "turn": 2},
            {"question_id": 2, "model": "m", "score": 6, "turn": 1}, {"question_id": 2, "model": "m", "score": 4, "turn": 2},
            {"question_id": 1, "model": "broken", "score": -1, "turn": 1}]
    [m, broken] = single_scores(rows)
    assert (m.first_turn, m.second_turn, m.average, m.judgments, m.failures) == (7.0, 4.0, 6.0, 3, 1)
    assert broken.average is None and broken.failures == 1
    assert "| m | 7.00 | 4.00 | 6.00 | 3 | 1 |" in to_markdown([m]) and to_csv([broken]).splitlines()[1] == "broken,,,,0,1"

    bad = tmp_path / "j.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ParleyError, match="j.jsonl:2"):
        read_jsonl(bad)
    missing = run_parley("eval", "mt-bench", "show", "--input-file", str(tmp_path / "none.jsonl"), timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_pairwise_table_counts_disagreement_as_a_tie_and_failures_apart():
    def pair(q, g1, g2, m1="a", m2="base"):
        return {"question_id": q, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2, "turn": 1}

    rows = [pair(1, "model_1", "model_1"), pair(2, "model_1", "model_2"), pair(3, "tie", "tie"),
            pair(4, "model_2", "model_2"), pair(5, "error", "model_1"), pair(6, "model_1", "model_1", "b", "base"),
            pair(7, "model_1", "model_1", "a", "b")]
    scores, failed = pair_scores(rows, baseline="base")
    assert failed == 1
    [b, a] = scores  # the baseline is not a row; the pair without it is not counted
    assert (a.model, a.win, a.loss, a.tie, a.failures) == ("a", 1, 1, 2, 1)
    assert (a.win_rate, a.win_rate_adjusted) == (0.25, 0.5) and (b.model, b.win, b.win_rate_adjusted) == ("b", 1, 1.0)
    assert "| a | 1 | 1 | 2 | 0.2500 | 0.2500 | 0.5000 | 1 |" in to_markdown(scores)
    every, _ = pair_scores(rows)
    assert {s.model: s.win for s in every} == {"a": 2, "b": 1, "base": 1}
