"""The web UI's rules: battle pairs, input limits, the moderation hook, model descriptions."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from parley.errors import ParleyError
from parley.web.arena import parse_weights, pick_pair
from parley.web.model_descriptions import ModelDescriptions
from parley.web.user_input import Limits, check_input, load_moderator


def test_battle_pairs_follow_the_weights_and_every_model_is_eligible_without_any():
    rng = random.Random(0)
    pairs = [pick_pair(["a", "b", "c"], rng=rng) for _ in range(3000)]
    assert all(x != y for x, y in pairs)
    seen = Counter(m for pair in pairs for m in pair)
    assert all(1800 < seen[m] < 2200 for m in "abc")  # each in about 2/3 of the battles
    assert Counter(p[0] for p in pairs)["a"] == pytest.approx(1000, abs=120)  # sides are shuffled
    weighted = Counter(m for _ in range(3000) for m in pick_pair(["a", "b", "c"], {"a": 4, "c": 0}, rng))
    assert weighted["c"] == 0 and weighted["a"] == weighted["b"] == 3000  # weight 0 leaves c out
    # With three eligible models the weights decide who battles: a (weight 4) is in 4/6 + 2 · (1/6 · 4/5) ≈ 93%
    # of the battles, b and d (weight 1) in 53% each; equal weights would give each 67%.
    weighted = Counter(m for _ in range(3000) for m in pick_pair(["a", "b", "c", "d"], {"a": 4, "c": 0}, rng))
    assert weighted["c"] == 0
    assert 2650 < weighted["a"] < 2950 and 1450 < weighted["b"] < 1750 and 1450 < weighted["d"] < 1750
    with pytest.raises(ParleyError, match="two models"):
        pick_pair(["only"])
    with pytest.raises(ParleyError, match="two models"):
        pick_pair(["a", "b"], {"b": 0})
    assert parse_weights("a=2, b=0.5,") == {"a": 2.0, "b": 0.5} and parse_weights(None) == {}
    for bad in ("a", "a=x", "a=-1"):
        with pytest.raises(ParleyError, match="--battle-weights"):
            parse_weights(bad)


def refuse_secrets(text: str) -> str | None:
    return "Please do not share secrets." if "password" in text.lower() else None


def test_input_limits_and_the_moderation_hook():
    limits = Limits(max_input_chars=20, max_turns=2)
    assert check_input("hello", 0, limits) is None
    assert "limit is 20" in check_input("x" * 21, 0, limits)
    assert "reached 2 turns" in check_input("hello", 2, limits)
    assert check_input("   ", 0, limits) == "Type a message first."
    hook = load_moderator("tests.test_web_user_input:refuse_secrets")
    assert check_input("my password is 1", 0, limits, hook) == "Please do not share secrets."
    assert check_input("hello", 0, limits, hook) is None
    for spec in ("tests.test_web_user_input:nothing", "no.such.module:f", "tests.test_web_user_input:json"):
        with pytest.raises(ParleyError, match="--moderation"):
            load_moderator(spec)


def test_model_descriptions_can_be_extended(tmp_path):
    info = ModelDescriptions()
    assert "bundled with parley" in info.describe("smollm2-135m-instruct") and info.describe("unknown") == "**unknown**"
    extra = tmp_path / "info.json"
    extra.write_text(json.dumps({"smollm2-135m-instruct-sft": {"description": "our fine-tune", "link": ""},
                                 "acme": {"description": "ACME's model", "link": "https://acme.test"}}))
    info = ModelDescriptions(extra)
    assert info.describe("smollm2-135m-instruct-sft") == "**smollm2-135m-instruct-sft**: our fine-tune"  # longest prefix
    assert info.describe("acme-7b") == "**acme-7b**: ACME's model ([link](https://acme.test))"
    extra.write_text("[1, 2]")
    with pytest.raises(ParleyError, match="--model-info"):
        ModelDescriptions(extra)
