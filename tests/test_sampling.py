"""The per-request sampler shared by the local engines: penalties, log-probabilities, fault isolation,
and its filters against transformers' own (the sampler is numpy; the references are torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parley.engines.base import SamplingParams
from parley.engines.sampling import (
    RequestSampler,
    SequenceState,
    TokenEvent,
    advance_rows,
)


class BrokenGrammar:
    finished = False

    def mask(self, scores):
        raise RuntimeError("grammar dead end")


def sequence(params: SamplingParams, events: list, matcher=None) -> SequenceState:
    return SequenceState(prompt_ids=[1, 2], params=params, max_new_tokens=5, stop_ids=frozenset({0}),
                         emit=events.append, sampler=RequestSampler(params, matcher=matcher))


def test_one_requests_failure_does_not_end_the_others_in_the_batch():
    ok_events, bad_events, finished = [], [], []
    ok = sequence(SamplingParams(temperature=0), ok_events)
    bad = sequence(SamplingParams(temperature=0), bad_events, matcher=BrokenGrammar())
    logits = torch.randn(2, 10)
    logits[:, 0] = -100.0  # token 0 is the stop token: the healthy request must go on
    keep = advance_rows([ok, bad], logits, lambda: finished.append(1))
    assert keep == [0] and len(finished) == 1
    assert isinstance(ok_events[0], TokenEvent) and ok_events[0].token_ids == [int(logits[0].argmax())]
    assert isinstance(bad_events[0], RuntimeError) and bad.cancelled


def test_penalties_and_logprobs():
    logits = np.array([0.0, 5.0, 4.9, 1.0], dtype=np.float32)
    plain = RequestSampler(SamplingParams(temperature=0, logprobs=2), token_bytes=lambda t: str(t).encode())
    token, lp = plain.choose(logits, [])
    assert token == 1 and lp.token == "1"
    assert math.isclose(lp.logprob, float(torch.log_softmax(torch.from_numpy(logits), -1)[1]), rel_tol=1e-6)
    assert [t.token for t in lp.top_logprobs] == ["1", "2"]
    assert plain.choose(logits, [])[0] == 1  # no penalty: the same token again
    penalized = RequestSampler(SamplingParams(temperature=0, frequency_penalty=0.5))
    assert penalized.choose(logits, [])[0] == 1
    assert penalized.choose(logits, [])[0] == 2  # 5.0 - 0.5 < 4.9


@pytest.mark.parametrize("top_k,top_p,min_p", [(20, 0.8, 0.0), (0, 0.9, 0.0), (5, 1.0, 0.0), (0, 1.0, 0.05),
                                               (10, 0.95, 0.02)])
def test_the_samplers_filters_choose_what_transformers_own_would(top_k, top_p, min_p):
    """Temperature, top-k, top-p, min-p and the repetition penalty in numpy, against transformers' processors."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from parley.engines.sampling import repetition_penalized

    torch.manual_seed(0)
    for _ in range(20):
        scores = torch.randn(1, 50) * 3
        params = SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p)
        ours = torch.from_numpy(RequestSampler(params)._warped(scores[0].numpy().copy()))[None]
        theirs = TemperatureLogitsWarper(0.7)(None, scores)
        for warper in ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else []) \
                + ([MinPLogitsWarper(min_p)] if min_p else []):
            theirs = warper(None, theirs)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])
        history = [3, 7, 7, 11]
        assert torch.allclose(torch.from_numpy(repetition_penalized(scores[0].numpy().copy(), history, 1.3))[None],
                              RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), scores))


def test_min_p_drops_tokens_below_its_share_of_the_likeliest():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    warped = RequestSampler(SamplingParams(min_p=0.5))._warped(logits.copy())
    assert np.isinf(warped).tolist() == [False, False, True, True]  # 0.15 and 0.05 < 0.5 × 0.5
    assert not np.isinf(RequestSampler(SamplingParams())._warped(logits.copy())).any()


def test_draws_follow_the_distribution_and_a_seed_repeats_them():
    """The draw itself: frequencies over many draws match the probabilities (a chi-square bound far beyond
    chance), a token of probability 0 is never drawn, and one seed gives one sequence, also from a torch row."""
    probs = np.array([0.5, 0.25, 0.125, 0.125, 0.0], dtype=np.float64)
    logits = np.log(np.where(probs > 0, probs, 1e-300)).astype(np.float32)
    logits[4] = -np.inf
    sampler = RequestSampler(SamplingParams(temperature=1.0, seed=1234))
    n = 20_000
    counts = np.bincount([sampler.choose(logits, [])[0] for _ in range(n)], minlength=5)
    assert counts[4] == 0
    expected = probs[:4] * n
    chi2 = float((((counts[:4] - expected) ** 2) / expected).sum())
    assert chi2 < 30, (counts, chi2)  # 3 degrees of freedom: chance exceeds 16 once in a thousand runs
    again = RequestSampler(SamplingParams(temperature=1.0, seed=1234))
    rows = torch.from_numpy(np.stack([logits, logits]))
    first = [again.choose(logits, [])[0] for _ in range(50)]
    replay = RequestSampler(SamplingParams(temperature=1.0, seed=1234))
    seqs = [SequenceState(prompt_ids=[1], params=SamplingParams(), max_new_tokens=100, stop_ids=frozenset(),
                          emit=lambda e: None, sampler=replay)]
    from_torch = []
    for _ in range(50):
        advance_rows(seqs, rows[:1], lambda: None)
        from_torch.append(seqs[0].generated[-1])
    assert first == from_torch
    assert RequestSampler(SamplingParams(temperature=1.0, seed=-1))._rng.random() == \
        RequestSampler(SamplingParams(temperature=1.0, seed=2**64 - 1))._rng.random()


def test_the_grammar_mask_leaves_exactly_the_allowed_tokens():
    """llguidance's bitmask, unpacked in numpy, allows exactly the tokens its own matcher accepts."""
    import llguidance

    from parley.engines.base import GuidedDecoding
    from parley.engines.guided import GrammarFactory

    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))
    vocab = 256 + 1 + 7  # past the tokenizer's own ids: never allowed
    factory = GrammarFactory(tokenizer, vocab)
    matcher = factory.matcher(GuidedDecoding(kind="json_schema", json_schema={"type": "integer"}))
    masked = matcher.mask(np.zeros(vocab, dtype=np.float32))
    allowed = {i for i in range(vocab) if masked[i] == 0}
    assert allowed and allowed <= {ord(c) for c in "-0123456789"}
    assert {ord(c) for c in "123456789"} <= allowed and not np.isfinite(masked[257:]).any()


class _ByteTokenizer:
    """A vocabulary of the 256 bytes and an end-of-sequence token, for llguidance's TokenizerWrapper."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"</s>"]

    def __call__(self, text):
        return list(text.encode())


@pytest.mark.parametrize("spread", [8.0, 0.1])  # peaked: only the candidates are sorted; flat: a full sort
def test_top_p_on_a_full_vocabulary_leaves_out_what_transformers_would(spread):
    from transformers.generation.logits_process import TopPLogitsWarper

    from parley.engines.sampling import top_p_dropped

    torch.manual_seed(1)
    for top_p in (0.5, 0.9, 0.99):
        scores = torch.randn(1, 49152) * spread
        theirs = torch.isinf(TopPLogitsWarper(top_p)(None, scores.clone()))[0]
        ours = torch.zeros(49152, dtype=torch.bool)
        ours[torch.from_numpy(top_p_dropped(scores[0].numpy(), top_p))] = True
        assert (ours != theirs).sum() <= 1  # float32 sums in another order may move the boundary token
        assert 0 < int((~ours).sum()) < 49152
