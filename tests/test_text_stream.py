"""Streaming text: no split characters, no partial stop strings, exact finish and usage."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from parley.engines.assembler import OutputAssembler
from parley.engines.hf.loading import model_directory
from parley.engines.text_stream import IncrementalDetokenizer, StopStringMatcher
from parley.models.source import resolve_model_source


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_directory(resolve_model_source(None)))


@pytest.mark.parametrize("text", ["Hello, world! Ça va? 🙂🐱 日本語のテキスト", "  leading and   inner  spaces\n\ttabs ", "a🙂b"])
def test_incremental_detokenizer_reassembles_text_without_broken_characters(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(lambda xs: tokenizer.decode(xs))
    deltas = [detok.push([i]) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    if not text.isascii():
        assert any(d == "" for d in deltas[:-1]), "some tokens are partial characters and must be held back"


def test_stop_matcher_holds_back_possible_prefixes_and_cuts_at_the_stop():
    m = StopStringMatcher(["STOP", "###"])
    assert m.push("Hello S") == "Hello "  # "S" could start STOP
    assert m.push("T") == ""  # "ST" still could
    assert m.push("ory") == "STory"  # it did not
    assert m.push(" and #") == " and "
    assert m.push("## tail") == ""
    assert m.stopped and m.flush() == ""


def test_stop_matcher_flushes_held_text_at_the_end():
    m = StopStringMatcher(["</s>"])
    assert m.push("end </") == "end "
    assert m.flush() == "</"


def test_stop_matcher_picks_the_earliest_stop():
    m = StopStringMatcher(["b", "a"])
    assert m.push("xxab") == "xx"


def test_assembler_counts_every_token_and_hides_the_stop_token():
    words = {1: "Hi", 2: " there", 3: "<eos>"}
    a = OutputAssembler(lambda ids: "".join(words[i] for i in ids if i != 3), stop=[], prompt_tokens=5)
    assert a.push([1]).text == "Hi"
    assert a.push([2]).text == " there"
    last = a.push([3], finish="stop", hidden_last=True)
    assert last.text == "" and last.finish_reason == "stop"
    assert last.usage.prompt_tokens == 5 and last.usage.completion_tokens == 3
    assert a.push([1]) is None  # nothing after the end


def test_assembler_reports_stop_when_a_stop_string_completes_on_the_last_token():
    words = {1: "one ", 2: "EN", 3: "D"}
    a = OutputAssembler(lambda ids: "".join(words[i] for i in ids), stop=["END"], prompt_tokens=1)
    assert a.push([1]).text == "one "
    assert a.push([2]).text == ""
    last = a.push([3], finish="length")
    assert last.finish_reason == "stop" and last.text == ""


def _earliest_stop_reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """Brute force over the whole text: the first stop to end wins (the longest of those that
    end at that character); the text before it is what a client sees."""
    stops = [s for s in stops if s]
    for end in range(1, len(text) + 1):
        ending = [len(s) for s in stops if text.endswith(s, 0, end)]
        if ending:
            return text[: end - max(ending)], True
    return text, False


def _held_back_reference(text: str, stops: list[str]) -> int:
    """The longest suffix of `text` that is a proper prefix of some stop."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


@pytest.mark.parametrize("alphabet", ["ab", "abc", "aé🙂"])
def test_stop_matcher_agrees_with_a_brute_force_reference_on_random_streams(alphabet):
    rng = random.Random(f"stops-{alphabet}")
    for _ in range(1500):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.1:
            stops.append("")  # ignored, as before
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected, expected_stop = _earliest_stop_reference(text, stops)
        m = StopStringMatcher(stops)
        shown, pos = "", 0
        while pos < len(text) or rng.random() < 0.2:
            size = rng.randint(0, 5)
            shown += m.push(text[pos: pos + size])
            pos = min(pos + size, len(text))
            if m.stopped:
                break
            read = text[:pos]  # nothing that may still become a stop is shown, and nothing more is held
            assert shown == read[: len(read) - _held_back_reference(read, [s for s in stops if s])], (stops, text)
        if m.stopped:
            assert m.push(text[pos:]) == ""
        shown += m.flush()
        assert (shown, m.stopped) == (expected, expected_stop), (stops, text)
