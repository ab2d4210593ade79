"""Per-request token choice inside a shared batch, for every local engine.

Each request keeps its own parameters, random generator, penalties, grammar matcher and
log-probability bookkeeping; an engine hands it one row of logits per step. Both the
transformers and the llama.cpp engines choose tokens here, so a request behaves the same
whichever engine computes the logits. Plain torch: nothing here needs transformers.

The order is that of transformers' and vLLM's samplers: repetition penalty, presence and
frequency penalties, grammar mask, then temperature, top-k, top-p and min-p, then a draw.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from parley.engines.base import FinishReason, SamplingParams, TokenLogprob, TopLogprob

TokenBytes = Callable[[int], bytes]  # the raw bytes a token id stands for


@dataclass
class TokenEvent:
    token_ids: list[int]
    finish: FinishReason | None = None
    hidden_last: bool = False  # the last token ends generation and is not shown
    logprobs: list[TokenLogprob] | None = None


Emit = Callable[[Any], None]  # receives TokenEvent or an exception; must be thread-safe


class RequestSampler:
    """Chooses the next token for one request from its row of the batch's logits."""

    def __init__(self, params: SamplingParams, device: torch.device | str, matcher: Any = None,
                 token_bytes: TokenBytes | None = None):
        self.greedy = params.greedy
        self._penalty = params.repetition_penalty if params.repetition_penalty != 1.0 else None
        self._presence = params.presence_penalty
        self._frequency = params.frequency_penalty
        self._counts: Counter[int] = Counter()  # generated tokens, for presence/frequency penalties
        self._matcher = matcher  # a grammar matcher (parley.engines.guided), or None
        self._logprobs = params.logprobs
        self._token_bytes = token_bytes
        self._temperature, self._top_k, self._top_p, self._min_p = (
            params.temperature, params.top_k, params.top_p, params.min_p)
        self._generator: torch.Generator | None = None
        if not self.greedy:
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(params.seed)

    @property
    def needs_row(self) -> bool:
        """False when the batch-wide argmax already is this request's choice."""
        return (not self.greedy or self._penalty is not None or self._matcher is not None
                or self._presence != 0.0 or self._frequency != 0.0 or self._logprobs is not None)

    @property
    def grammar_finished(self) -> bool:
        return self._matcher is not None and self._matcher.finished

    def choose(self, row: torch.Tensor, history: Sequence[int]) -> tuple[int, TokenLogprob | None]:
        """`row`: this request's logits, shape [1, vocab]; `history`: prompt + generated ids.
        Returns the token and, when asked for, its log-probability and the top alternatives
        (from the model's own distribution, before penalties, grammar and temperature)."""
        raw = row.float()
        scores = raw
        if self._penalty is not None:
            scores = repetition_penalized(scores, history, self._penalty)
        if self._counts and (self._presence or self._frequency):
            ids = torch.tensor(list(self._counts), device=scores.device)
            counts = torch.tensor(list(self._counts.values()), device=scores.device, dtype=scores.dtype)
            scores = scores.clone() if scores is raw else scores
            scores[0, ids] -= self._presence + self._frequency * counts
        if self._matcher is not None:
            scores = self._matcher.mask(scores.clone() if scores is raw else scores)
        if self.greedy:
            token = int(scores.argmax(-1))
        else:
            probs = torch.softmax(self._warped(scores), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self._generator))
        self._counts[token] += 1
        if self._matcher is not None:
            self._matcher.accept(token)
        return token, (self._logprob_of(raw, token) if self._logprobs is not None else None)

    def _warped(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, top-p and min-p: what falls outside them gets -inf."""
        if self._temperature != 1.0:
            scores = scores / self._temperature
        if 0 < self._top_k < scores.shape[-1]:
            kth = torch.topk(scores, self._top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if self._top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - self._top_p
            drop[..., -1] = False  # the likeliest token always stays
            scores = scores.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
        if self._min_p > 0.0:
            probs = scores.softmax(dim=-1)
            floor = self._min_p * probs.max(dim=-1, keepdim=True).values
            scores = scores.masked_fill(probs < floor, -float("inf"))
        return scores

    def _logprob_of(self, raw: torch.Tensor, token: int) -> TokenLogprob:
        logp = torch.log_softmax(raw[0], dim=-1)
        top: list[TopLogprob] = []
        if self._logprobs:
            values, ids = torch.topk(logp, self._logprobs)
            top = [self._entry(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist())]
        chosen = self._entry(token, float(logp[token]))
        return TokenLogprob(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top_logprobs=top)

    def _entry(self, token: int, logprob: float) -> TopLogprob:
        raw = self._token_bytes(token) if self._token_bytes else b""
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=max(logprob, -9999.0), bytes=list(raw))


def repetition_penalized(scores: torch.Tensor, history: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: the logit of every token
    seen so far is divided by `penalty` when positive and multiplied by it when negative."""
    if not history:
        return scores
    ids = torch.tensor([list(history)], device=scores.device)
    seen = torch.gather(scores, 1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, ids, seen)


@dataclass(eq=False)
class SequenceState:
    """One request inside an engine's decoding loop."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int]
    emit: Emit
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False  # set by the consumer (client gone, stop string found)
    sampler: RequestSampler | None = None


def advance_rows(seqs: Sequence[SequenceState], logits: torch.Tensor, on_finish: Callable[[], None]) -> list[int]:
    """Choose each row's next token, emit it, and return the rows that go on decoding.
    `logits`: [len(seqs), vocab]; `on_finish` is called once per request that ends."""
    greedy = logits.argmax(-1).tolist()
    keep: list[int] = []
    for row, seq in enumerate(seqs):
        try:
            token, logprob, finish = _next_token(seq, logits, row, greedy[row])
        except Exception as exc:  # this request's sampler or grammar failed: end it, not the batch
            try:
                seq.emit(exc)
            except RuntimeError:
                pass
            seq.cancelled = True
            on_finish()
            continue
        try:
            seq.emit(TokenEvent([token], finish, hidden_last=finish == "stop" and token in seq.stop_ids,
                                logprobs=[logprob] if logprob is not None else None))
        except RuntimeError:  # the consumer's event loop is gone
            seq.cancelled = True
        if finish is None and not seq.cancelled:
            keep.append(row)
        elif finish is not None:
            on_finish()
    return keep


def _next_token(seq: SequenceState, logits: torch.Tensor, row: int,
                argmax: int) -> tuple[int, TokenLogprob | None, FinishReason | None]:
    """One request's next token (recorded in `seq.generated`), its log-probability, and whether it ends."""
    sampler = seq.sampler
    assert sampler is not None
    logprob = None
    if sampler.needs_row:
        token, logprob = sampler.choose(logits[row: row + 1], seq.prompt_ids + seq.generated)
    else:
        token = argmax
    finish: FinishReason | None = None
    if token in seq.stop_ids:
        finish = "stop"
    elif sampler.grammar_finished:
        finish = "stop"  # the structure is complete: nothing more may follow
    elif len(seq.generated) + 1 >= seq.max_new_tokens:
        finish = "length"
    seq.generated.append(token)
    return token, logprob, finish


class SamplerFactory:
    """What an engine needs for guided decoding and log-probabilities: its vocabulary as
    llguidance sees it, built on first use (about a second) and then shared by all requests."""

    def __init__(self, build_factory: Callable[[], Any]):
        self._build = build_factory
        self._factory: Any = None
        self._lock = asyncio.Lock()

    async def factory(self):
        async with self._lock:
            if self._factory is None:
                self._factory = await asyncio.to_thread(self._build)
        return self._factory

    async def sampler(self, params: SamplingParams, device: torch.device | str) -> RequestSampler:
        if params.guided is None and params.logprobs is None:
            return RequestSampler(params, device)
        factory = await self.factory()
        matcher = None
        if params.guided is not None:  # compiled off the event loop, within a time limit
            from parley.engines.guided import build_matcher

            matcher = await build_matcher(factory, params.guided)
        return RequestSampler(params, device, matcher=matcher,
                              token_bytes=lambda t: factory.tokenizer.decode_bytes([t]))
