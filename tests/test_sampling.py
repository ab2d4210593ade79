"""The per-request sampler shared by the local engines: penalties, log-probabilities, fault isolation."""

from __future__ import annotations

import math

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
                         emit=events.append, sampler=RequestSampler(params, "cpu", matcher=matcher))


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
    logits = torch.tensor([[0.0, 5.0, 4.9, 1.0]])
    plain = RequestSampler(SamplingParams(temperature=0, logprobs=2), "cpu", token_bytes=lambda t: str(t).encode())
    token, lp = plain.choose(logits, [])
    assert token == 1 and lp.token == "1" and math.isclose(lp.logprob, float(torch.log_softmax(logits[0], -1)[1]))
    assert [t.token for t in lp.top_logprobs] == ["1", "2"]
    assert plain.choose(logits, [])[0] == 1  # no penalty: the same token again
    penalized = RequestSampler(SamplingParams(temperature=0, frequency_penalty=0.5), "cpu")
    assert penalized.choose(logits, [])[0] == 1
    assert penalized.choose(logits, [])[0] == 2  # 5.0 - 0.5 < 4.9


def test_the_samplers_filters_choose_what_transformers_own_would():
    """temperature, top-k, top-p and the repetition penalty in plain torch, against transformers' processors."""
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from parley.engines.sampling import repetition_penalized

    torch.manual_seed(0)
    for _ in range(20):
        scores = torch.randn(1, 50) * 3
        params = SamplingParams(temperature=0.7, top_k=20, top_p=0.8)
        ours = RequestSampler(params, "cpu")._warped(scores)
        theirs = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(20)(None, TemperatureLogitsWarper(0.7)(None, scores)))
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])
        history = [3, 7, 7, 11]
        assert torch.allclose(repetition_penalized(scores, history, 1.3),
                              RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), scores))


def test_min_p_drops_tokens_below_its_share_of_the_likeliest():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    warped = RequestSampler(SamplingParams(min_p=0.5), "cpu")._warped(probs.log())
    assert torch.isinf(warped).tolist() == [[False, False, True, True]]  # 0.15 and 0.05 < 0.5 × 0.5
    assert not torch.isinf(RequestSampler(SamplingParams(), "cpu")._warped(probs.log())).any()
