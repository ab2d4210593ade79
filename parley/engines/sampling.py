"""Per-request token choice inside a shared batch, for every local engine.

Each request keeps its own parameters, random generator, penalties, grammar matcher and
log-probability bookkeeping; an engine hands it one row of logits per step. Both the
transformers and the llama.cpp engines choose tokens here, so a request behaves the same
whichever engine computes the logits. Plain numpy: nothing here needs torch or transformers,
so the llama.cpp engine runs without either. The transformers engine hands its logits over as
torch tensors; only the rows a request samples from are copied out (the batch's argmax serves
every greedy request without penalties).

The order is that of transformers' and vLLM's samplers: repetition penalty, presence and
frequency penalties, grammar mask, then temperature, top-k, top-p and min-p, then a draw.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.engines.base import FinishReason, SamplingParams, TokenLogprob, TopLogprob

TokenBytes = Callable[[int], bytes]  # the raw bytes a token id stands for
_NEG_INF = np.float32(-np.inf)


@dataclass
class TokenEvent:
    token_ids: list[int]
    finish: FinishReason | None = None
    hidden_last: bool = False  # the last token ends generation and is not shown
    logprobs: list[TokenLogprob] | None = None


@dataclass
class PromptLogprobs:
    """The log-probabilities of a prompt's tokens (each given the tokens before it), computed in its prefill:
    entry i is about prompt token i + 1. `top_ids`/`top_logprobs`: the N likeliest tokens at each place, likeliest
    first ([n - 1, N])."""

    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray

    @classmethod
    def of(cls, logits: Any, next_ids: Sequence[int], top_n: int) -> PromptLogprobs:
        """From the logits at the prompt's places ([k, vocab], a numpy array or a torch tensor) and the tokens
        that follow each place ([k]), in float32 as the model computed them."""
        if not isinstance(logits, np.ndarray):  # torch (the transformers engine): log_softmax where the logits are
            import torch

            logp = torch.log_softmax(logits.float(), dim=-1)
            chosen = logp.gather(1, torch.as_tensor(list(next_ids), dtype=torch.long, device=logp.device)
                                 .view(-1, 1)).squeeze(1)
            top = logp.topk(top_n, dim=-1) if top_n else None
            return cls(chosen.cpu().numpy(), top.indices.cpu().numpy() if top is not None else _no_top(len(next_ids)),
                       top.values.cpu().numpy() if top is not None else _no_top(len(next_ids), np.float32))
        scores = np.asarray(logits, dtype=np.float32)
        shifted = scores - scores.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        chosen = logp[np.arange(len(next_ids)), np.asarray(next_ids, dtype=np.int64)]
        if not top_n:
            return cls(chosen, _no_top(len(next_ids)), _no_top(len(next_ids), np.float32))
        ids = np.argpartition(-logp, top_n - 1, axis=1)[:, :top_n]
        values = np.take_along_axis(logp, ids, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        return cls(chosen, np.take_along_axis(ids, order, axis=1), np.take_along_axis(values, order, axis=1))

    @classmethod
    def joined(cls, parts: list[PromptLogprobs]) -> PromptLogprobs:
        """A prompt's, from those of its prefill chunks in order."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logprobs", "top_ids", "top_logprobs")))

    def entries(self, prompt_ids: Sequence[int], token_bytes: TokenBytes) -> list[TokenLogprob]:
        """One TokenLogprob per prompt token; the first token's has logprob 0.0 and no alternatives (nothing
        precedes it: see GenerationRequest.prompt_logprobs)."""
        def entry(token: int, logprob: float) -> TopLogprob:
            raw = token_bytes(token)
            return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=max(logprob, -9999.0), bytes=list(raw))

        first = entry(prompt_ids[0], 0.0)
        out = [TokenLogprob(**first.model_dump())]
        for i, token in enumerate(prompt_ids[1:]):
            chosen = entry(token, float(self.logprobs[i]))
            top = [entry(int(t), float(v)) for t, v in zip(self.top_ids[i], self.top_logprobs[i])]
            out.append(TokenLogprob(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top_logprobs=top))
        return out


def _no_top(rows: int, dtype=np.int64) -> np.ndarray:
    return np.zeros((rows, 0), dtype=dtype)


Emit = Callable[[Any], None]  # receives TokenEvent, PromptLogprobs or an exception; must be thread-safe


DRAW_BLOCK = 512  # tokens per block of the inverse-transform draw
TOP_P_CANDIDATES = 1024  # top-p sorts only the likeliest this many when they hold the mass it keeps


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities from logits (-inf gives 0), in float32 as torch's samplers compute them."""
    out = np.exp(scores - scores.max())
    out /= out.sum()
    return out


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_p_dropped(scores: np.ndarray, top_p: float) -> np.ndarray:
    """The ids top-p (nucleus) sampling leaves out, as transformers' TopPLogitsWarper decides: in ascending
    order of probability, each token whose cumulative probability (its own and all less likely ones) is at
    most 1 − top_p; the likeliest token always stays. When the likeliest TOP_P_CANDIDATES hold at least
    top_p of the mass, everything beyond them is left out and only they are sorted (a full sort of a
    50,000-token vocabulary costs milliseconds a token)."""
    probs = softmax(scores)
    n = probs.shape[-1]
    if n > 2 * TOP_P_CANDIDATES:
        candidates = np.argpartition(probs, n - TOP_P_CANDIDATES)[n - TOP_P_CANDIDATES:]
        held = float(probs[candidates].sum())
        if held >= top_p:
            order = candidates[np.argsort(probs[candidates], kind="stable")]  # ascending
            tail = 1.0 - held  # the mass of the others, below every candidate
            drop = tail + np.cumsum(probs[order]) <= 1 - top_p
            drop[-1] = False
            outside = np.ones(n, dtype=bool)
            outside[candidates] = False
            return np.concatenate([np.flatnonzero(outside), order[drop]])
    order = np.argsort(probs, kind="stable")
    drop = np.cumsum(probs[order]) <= 1 - top_p
    drop[-1] = False  # the likeliest token always stays
    return order[drop]


def random_generator(seed: int | None) -> np.random.Generator:
    """A request's own generator: from `seed` (any value SamplingParams takes, −2⁶³…2⁶⁴−1; a negative seed
    counts from 2⁶⁴, as torch's does) or, without one, from fresh entropy."""
    return np.random.default_rng(None if seed is None else seed % 2**64)


class RequestSampler:
    """Chooses the next token for one request from its row of the batch's logits."""

    def __init__(self, params: SamplingParams, matcher: Any = None, token_bytes: TokenBytes | None = None):
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
        self._rng = None if self.greedy else random_generator(params.seed)

    @property
    def needs_row(self) -> bool:
        """False when the batch-wide argmax already is this request's choice."""
        return (not self.greedy or self._penalty is not None or self._matcher is not None
                or self._presence != 0.0 or self._frequency != 0.0 or self._logprobs is not None)

    @property
    def uses_history(self) -> bool:
        """Whether `choose` reads the prompt and generated ids (only the repetition penalty does)."""
        return self._penalty is not None

    @property
    def grammar_finished(self) -> bool:
        return self._matcher is not None and self._matcher.finished

    def choose(self, row: np.ndarray, history: Sequence[int]) -> tuple[int, TokenLogprob | None]:
        """`row`: this request's logits, shape [vocab] (float32); `history`: prompt + generated ids.
        Returns the token and, when asked for, its log-probability and the top alternatives
        (from the model's own distribution, before penalties, grammar and temperature)."""
        raw = row
        scores = raw.astype(np.float32)  # a copy: `raw` stays as the model gave it
        if self._penalty is not None:
            scores = repetition_penalized(scores, history, self._penalty)
        if self._counts and (self._presence or self._frequency):
            ids = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            scores[ids] -= np.float32(self._presence) + np.float32(self._frequency) * counts
        if self._matcher is not None:
            scores = self._matcher.mask(scores)
        if self.greedy:
            token = int(scores.argmax())
        else:
            token = self._draw(softmax(self._warped(scores)))
        self._counts[token] += 1
        if self._matcher is not None:
            self._matcher.accept(token)
        return token, (self._logprob_of(raw, token) if self._logprobs is not None else None)

    def _draw(self, probs: np.ndarray) -> int:
        """One token by inverse transform: the first whose cumulative probability passes a uniform draw
        (a token of probability 0 is never the first to pass). The running sum goes block by block (the
        block where the draw lands, then within it): a cumulative sum of the whole vocabulary costs a
        fifth of a millisecond a token, most of a sampling step."""
        assert self._rng is not None
        n = len(probs)
        blocks = -(-n // DRAW_BLOCK)
        padded = probs if n == blocks * DRAW_BLOCK else np.concatenate([probs, np.zeros(blocks * DRAW_BLOCK - n, probs.dtype)])
        sums = padded.reshape(blocks, DRAW_BLOCK).sum(axis=1, dtype=np.float64)
        edges = np.cumsum(sums)
        target = self._rng.random() * edges[-1]
        # target < edges[-1], so the block exists, and edges[block] > target >= edges[block - 1]: it has mass
        block = int(np.searchsorted(edges, target, side="right"))
        start = block * DRAW_BLOCK
        within = np.cumsum(padded[start: start + DRAW_BLOCK], dtype=np.float64)
        before = edges[block - 1] if block else 0.0
        token = start + int(np.searchsorted(within, target - before, side="right"))
        # the block's own running sum can round below its share of `edges`: then its last token with mass
        return min(token, start + int(np.flatnonzero(padded[start: start + DRAW_BLOCK])[-1]))

    def _warped(self, scores: np.ndarray) -> np.ndarray:
        """Temperature, then top-k, top-p and min-p: what falls outside them gets -inf (in place)."""
        if self._temperature != 1.0:
            scores /= np.float32(self._temperature)
        if 0 < self._top_k < scores.shape[-1]:
            kth = np.partition(scores, -self._top_k)[-self._top_k]
            scores[scores < kth] = _NEG_INF
        if self._top_p < 1.0:
            scores[top_p_dropped(scores, self._top_p)] = _NEG_INF
        if self._min_p > 0.0:
            probs = softmax(scores)
            scores[probs < self._min_p * probs.max()] = _NEG_INF
        return scores

    def _logprob_of(self, raw: np.ndarray, token: int) -> TokenLogprob:
        logp = log_softmax(raw)
        top: list[TopLogprob] = []
        if self._logprobs:
            ids = np.argpartition(-logp, self._logprobs - 1)[: self._logprobs]
            ids = ids[np.argsort(-logp[ids], kind="stable")]
            top = [self._entry(int(i), float(logp[i])) for i in ids]
        chosen = self._entry(token, float(logp[token]))
        return TokenLogprob(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top_logprobs=top)

    def _entry(self, token: int, logprob: float) -> TopLogprob:
        raw = self._token_bytes(token) if self._token_bytes else b""
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=max(logprob, -9999.0), bytes=list(raw))


def repetition_penalized(scores: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: the logit of every token
    seen so far is divided by `penalty` when positive and multiplied by it when negative (in place)."""
    if not history:
        return scores
    ids = np.unique(np.asarray(history, dtype=np.int64))
    seen = scores[ids]
    scores[ids] = np.where(seen < 0, seen * np.float32(penalty), seen / np.float32(penalty))
    return scores


def logits_row(logits: Any, row: int) -> np.ndarray:
    """Row `row` of a batch's logits as a float32 numpy vector: a numpy array's (llama.cpp) as it is, a torch
    tensor's (transformers, on any device) copied to the host."""
    if isinstance(logits, np.ndarray):
        return logits[row]
    return logits[row].float().cpu().numpy()


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
    # N: the prompt's log-probabilities (with the N likeliest at each place) are computed in its prefill, every
    # position of it (no prefix reused), and emitted as PromptLogprobs before the first token; None: not asked for.
    prompt_logprobs: int | None = None


def advance_rows(seqs: Sequence[SequenceState], logits: Any, on_finish: Callable[[], None]) -> list[int]:
    """Choose each row's next token, emit it, and return the rows that go on decoding.
    `logits`: [len(seqs), vocab], a numpy array or a torch tensor (see `logits_row`); `on_finish` is called
    once per request that ends."""
    greedy = logits.argmax(-1).tolist()
    keep: list[int] = []
    for row, seq in enumerate(seqs):
        if seq.max_new_tokens <= 0:  # only the prompt was asked for (its log-probabilities): nothing to sample
            try:
                seq.emit(TokenEvent([], "length"))
            except RuntimeError:
                seq.cancelled = True
            on_finish()
            continue
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


def _next_token(seq: SequenceState, logits: Any, row: int,
                argmax: int) -> tuple[int, TokenLogprob | None, FinishReason | None]:
    """One request's next token (recorded in `seq.generated`), its log-probability, and whether it ends."""
    sampler = seq.sampler
    assert sampler is not None
    logprob = None
    if sampler.needs_row:
        history = seq.prompt_ids + seq.generated if sampler.uses_history else ()  # a copy: only when needed
        token, logprob = sampler.choose(logits_row(logits, row), history)
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

    async def sampler(self, params: SamplingParams) -> RequestSampler:
        if params.guided is None and params.logprobs is None:
            return RequestSampler(params)
        factory = await self.factory()
        matcher = None
        if params.guided is not None:  # compiled off the event loop, within a time limit
            from parley.engines.guided import build_matcher

            matcher = await build_matcher(factory, params.guided)
        return RequestSampler(params, matcher=matcher,
                              token_bytes=lambda t: factory.tokenizer.decode_bytes([t]))
