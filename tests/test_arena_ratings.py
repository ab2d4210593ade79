"""Arena ratings: Bradley–Terry, online Elo and bootstrap intervals on battles with known true strengths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parley.eval.arena_battles import Battle, load_battles
from parley.eval.arena_ratings import (
    bootstrap_bt,
    bradley_terry,
    online_elo,
    pairwise_matrices,
)
from tests.conftest import run_parley

TRUE = {"m-alpha": 1230.0, "m-bravo": 1120.0, "m-charlie": 1050.0, "m-delta": 990.0, "m-echo": 880.0, "m-foxtrot": 730.0}
TRUE = {m: r - np.mean(list(TRUE.values())) + 1000.0 for m, r in TRUE.items()}  # our ratings are centred on 1000


def draw_battles(n: int, rng: np.random.Generator, truth: dict[str, float] = TRUE) -> list[Battle]:
    """Battles whose expected score for A is the Elo-scale win probability; ties (more likely between close
    models) keep that expectation, so ties-as-half-wins recovers the truth."""
    models = list(truth)
    battles = []
    for i in range(n):
        a, b = rng.choice(len(models), 2, replace=False)
        p = 1.0 / (1.0 + 10 ** ((truth[models[b]] - truth[models[a]]) / 400))
        tie = 0.6 * min(p, 1 - p)
        q = (p - tie / 2) / (1 - tie)
        u = rng.random()
        winner = "tie" if u < tie else ("model_a" if rng.random() < q else "model_b")
        if winner == "tie" and rng.random() < 0.3:
            winner = "tie (bothbad)"
        battles.append(Battle(model_a=models[a], model_b=models[b], winner=winner, tstamp=float(i)))
    return battles


def test_bradley_terry_recovers_the_true_strengths_and_order():
    battles = draw_battles(20000, np.random.default_rng(1))
    ratings, _ = bradley_terry(battles)
    assert sorted(ratings, key=ratings.get, reverse=True) == list(TRUE)
    assert abs(np.mean(list(ratings.values())) - 1000.0) < 1e-6
    assert max(abs(ratings[m] - TRUE[m]) for m in TRUE) < 20


def test_online_elo_recovers_the_order():
    battles = draw_battles(20000, np.random.default_rng(2))
    elo = online_elo(battles)
    assert sorted(elo, key=elo.get, reverse=True) == list(TRUE)


def test_bradley_terry_agrees_with_a_logistic_regression_fit():
    sklearn = pytest.importorskip("sklearn.linear_model")
    battles = draw_battles(3000, np.random.default_rng(3))
    ratings, _ = bradley_terry(battles)
    models = sorted(ratings)
    # FastChat's formulation, battle by battle: +log(10) for A, -log(10) for B; a tie is half a win each way.
    x, y, w = [], [], []
    for b in battles:
        row = np.zeros(len(models))
        row[models.index(b.model_a)], row[models.index(b.model_b)] = math.log(10), -math.log(10)
        outcomes = {"model_a": [(1, 1.0)], "model_b": [(0, 1.0)]}.get(b.winner, [(1, 0.5), (0, 0.5)])
        for label, weight in outcomes:
            x.append(row)
            y.append(label)
            w.append(weight)
    lr = sklearn.LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10000)
    lr.fit(np.array(x), np.array(y), sample_weight=np.array(w))
    reference = 400 * lr.coef_[0] + 1000
    reference += 1000 - reference.mean()
    assert max(abs(ratings[m] - reference[i]) for i, m in enumerate(models)) < 0.01


def test_ties_count_as_half_wins():
    """Two models: the rating gap is exactly 400·log10((wins + ties/2) / (losses + ties/2))."""
    battles = ([Battle(model_a="x", model_b="y", winner="model_a")] * 30 + [Battle(model_a="y", model_b="x", winner="model_a")] * 10
               + [Battle(model_a="x", model_b="y", winner="tie")] * 40 + [Battle(model_a="y", model_b="x", winner="tie (bothbad)")] * 20)
    ratings, _ = bradley_terry(battles)
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10((30 + 30) / (10 + 30)), abs=1e-6)  # 70.4
    # Dropping ties would give 400·log10(3) = 190.8: the weighting moves the gap by 120 points.
    rate, count = pairwise_matrices(battles, ["x", "y"])
    assert rate["x"]["y"] == pytest.approx(0.6) and count["x"]["y"] == 100


def test_bootstrap_intervals_cover_the_truth_at_about_the_stated_rate():
    rng = np.random.default_rng(4)
    covered = total = 0
    for experiment in range(30):
        intervals = bootstrap_bt(draw_battles(1500, rng), rounds=200, seed=experiment)
        for model, truth in TRUE.items():
            total += 1
            covered += intervals[model].lower <= truth <= intervals[model].upper
    assert 0.88 <= covered / total <= 0.995, f"95% intervals covered the truth {covered}/{total} times"


def test_style_control_separates_style_from_strength():
    """Two equally strong models; voters prefer the longer answer. Without style control the verbose one is rated
    higher; with it the two are level and the length coefficient carries the preference."""
    rng = np.random.default_rng(5)
    battles = []
    for i in range(4000):
        words_a, words_b = rng.integers(20, 400, 2)
        long_a, long_b = rng.random() < 0.7, rng.random() < 0.3  # "verbose" tends to write long answers
        if i % 2:
            (name_a, la), (name_b, lb) = ("verbose", long_a), ("terse", long_b)
        else:
            (name_a, la), (name_b, lb) = ("terse", long_b), ("verbose", long_a)
        na, nb = int(words_a * (3 if la else 1)), int(words_b * (3 if lb else 1))
        p = 1 / (1 + math.exp(-2.0 * (na - nb) / (na + nb)))
        winner = "model_a" if rng.random() < p else "model_b"
        battles.append(Battle(model_a=name_a, model_b=name_b, winner=winner,
                              conversation_a=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "w " * na}],
                              conversation_b=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "w " * nb}]))
    plain, _ = bradley_terry(battles)
    controlled, coefficients = bradley_terry(battles, style=True)
    assert plain["verbose"] - plain["terse"] > 50
    assert abs(controlled["verbose"] - controlled["terse"]) < 20
    assert coefficients["length"] > 0.3


def _vote(kind: str, models: tuple[str, str], served: tuple[str, str], answers: tuple[str, str], t: float) -> dict:
    states = [{"conv_id": f"c{t}", "model_name": s, "offset": 0,
               "messages": [["USER", "Tell me a joke."], ["ASSISTANT", answer]]} for s, answer in zip(served, answers)]
    return {"tstamp": t, "type": kind, "models": list(models), "states": states, "ip": "127.0.0.1"}


def test_fastchat_logs_are_cleaned_and_rated_by_the_cli(tmp_path):
    log = tmp_path / "2026-11-23-conv.json"
    rows = []
    rng = np.random.default_rng(6)
    for i, battle in enumerate(draw_battles(600, rng, {"m-alpha": 1100.0, "m-bravo": 1000.0, "m-charlie": 900.0})):
        kind = {"model_a": "leftvote", "model_b": "rightvote", "tie": "tievote", "tie (bothbad)": "bothbad_vote"}[battle.winner]
        rows.append(_vote(kind, ("", ""), (battle.model_a, battle.model_b), ("A joke.", "Another joke."), float(i)))
    rows.append(_vote("leftvote", ("m-alpha", "m-bravo"), ("m-alpha", "m-bravo"), ("x", "y"), 900.0))  # named
    rows.append(_vote("leftvote", ("", ""), ("m-alpha", "m-bravo"), ("I was trained by OpenAI.", "y"), 901.0))  # leak
    rows.append(_vote("rightvote", ("", ""), ("m-bravo", "m-alpha"), ("x", "As m-alpha, I think"), 902.0))  # leak
    rows.append({"tstamp": 903.0, "type": "chat", "model": "m-alpha"})  # not a vote
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    battles, cleaning = load_battles([log])
    assert cleaning.battles == 600 and len(battles) == 600
    assert cleaning.dropped == {"identity revealed": 2, "named (not anonymous) battle": 1, "not a vote": 1}
    assert {b.winner for b in battles} == {"model_a", "model_b", "tie", "tie (bothbad)"}
    named, _ = load_battles([log], anony_only=False)
    assert len(named) == 601

    out = tmp_path / "ratings"
    result = run_parley("eval", "ratings", str(log), "--output-dir", str(out), "--bootstrap-rounds", "100",
                        "--elo-rounds", "20", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "604 records -> 600 battles" in result.stdout
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["m-alpha", "m-bravo", "m-charlie"]
    assert all(r["lower"] < r["rating"] < r["upper"] for r in board["rows"]) and sum(r["votes"] for r in board["rows"]) == 1200
    assert board["battle_count"]["m-alpha"]["m-bravo"] == board["battle_count"]["m-bravo"]["m-alpha"] > 0
    assert (out / "leaderboard.md").read_text().splitlines()[2].startswith("| 1 | m-alpha |")
    for png in ("ratings.png", "win_rates.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(rows[-1]) + "\n")
    result = run_parley("eval", "ratings", str(empty), "--output-dir", str(out), timeout=120)
    assert result.returncode != 0 and "nothing to rate" in result.stderr


def test_models_whose_rating_the_votes_cannot_pin_down_are_marked_provisional():
    from parley.eval.arena_battles import Cleaning
    from parley.eval.arena_leaderboard import (
        PROVISIONAL,
        build,
        identified_models,
        to_markdown,
    )

    def battle(a, b, winner):
        return Battle(model_a=a, model_b=b, winner=winner)

    assert identified_models([battle("x", "y", "model_a")]) == set()  # one win: the MLE is at infinity
    assert identified_models([battle("x", "y", "model_a"), battle("x", "y", "tie")]) == {"x", "y"}
    unbeaten = [battle("x", "y", "model_a"), battle("y", "x", "model_a"), battle("z", "x", "model_a"),
                battle("z", "y", "model_a")]
    assert identified_models(unbeaten) == {"x", "y"}
    board = build(unbeaten, Cleaning(), rounds=20, elo_rounds=5)
    assert {r.model: r.provisional for r in board.rows} == {"x": False, "y": False, "z": True}
    assert f"| z | — | {PROVISIONAL} | 2 |" in to_markdown(board)
