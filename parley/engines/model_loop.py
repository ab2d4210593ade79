"""The thread that owns a local model, shared by the transformers and llama.cpp engines.

Requests reach it through an inbox; each iteration it takes what arrived, admits waiting
requests into the running batch, and runs one step for the batch. Other work that needs the
model (embeddings) runs between steps through `call`. The engines say how to admit and how
to step; everything else is here, along with `stream_sequence`, which turns a request's token
events into `GenerationChunk`s.

One bad request fails alone: a prompt the model fails on (out of memory on a long prompt,
say) ends only the requests in that prefill, which the engine's `_admit` handles; a failed
decoding step ends the running batch, with `RequestFailedError` naming the cause; waiting
requests, later requests and `call`s are served as usual. Only shutting down ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from parley.engines.assembler import OutputAssembler
from parley.engines.base import (
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    RequestFailedError,
    TokenLogprob,
)
from parley.engines.prompted import PromptEngine
from parley.engines.sampling import (
    Emit,
    PromptLogprobs,
    RequestSampler,
    SamplerFactory,
    SequenceState,
)
from parley.errors import ContextLengthError, EngineClosedError, InvalidRequestError

log = logging.getLogger(__name__)


class ModelLoop(ABC):
    thread_name = "parley-model"

    def __init__(self) -> None:
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._waiting: deque[SequenceState] = deque()
        self._closed = threading.Event()
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ---- what an engine's loop provides ----------------------------------------------------
    @abstractmethod
    def running_count(self) -> int: ...

    @abstractmethod
    def _admit(self) -> None:
        """Move requests from `self._waiting` into the running batch."""

    @abstractmethod
    def _step(self) -> None:
        """One decoding step for the running batch."""

    @abstractmethod
    def _take_running(self) -> list[SequenceState]:
        """Empty the running batch (freeing what it holds) and return its sequences."""

    def _on_close(self) -> None:
        """Free what the loop holds, after its thread has ended."""

    def _running_context(self) -> contextlib.AbstractContextManager:
        """What the model thread runs inside (the transformers engine: `torch.inference_mode()`)."""
        return contextlib.nullcontext()

    def _after_failure(self) -> None:
        """Give back what a failed step held (the transformers engine: CUDA's cached memory)."""

    # ---- called from other threads ---------------------------------------------------------
    def submit(self, seq: SequenceState) -> None:
        if self._closed.is_set():
            raise EngineClosedError("the engine is shut down")
        if seq.sampler is None:
            seq.sampler = RequestSampler(seq.params)
        self._inbox.put(seq)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the model thread between steps (embeddings and the like). What it raises
        comes back through the future and touches nothing else."""
        fut: Future = Future()
        if self._closed.is_set():
            fut.set_exception(EngineClosedError("the engine is shut down"))
            return fut
        self._inbox.put((fn, fut))
        return fut

    def snapshot(self) -> EngineStats:
        """The counters, with the running/waiting gauges read now."""
        stats = self.stats.model_copy()
        stats.running = self.running_count()
        stats.waiting = len(self._waiting) + self._inbox.qsize()
        return stats

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        self._inbox.put(None)
        self._thread.join(timeout)
        self._on_close()

    # ---- the model thread -------------------------------------------------------------------
    def _run(self) -> None:
        with self._running_context():
            while True:
                self._collect(block=self.running_count() == 0 and not self._waiting)
                if self._closed.is_set():
                    self._fail_all(EngineClosedError("the engine was shut down"))
                    return
                try:
                    self._admit()
                    if self.running_count():
                        self._step()
                except Exception as exc:  # a failed step ends the batch it ran, not the engine
                    seqs = self._take_running()
                    log.exception("%s: a decoding step failed; ending the %d requests in it", self.thread_name, len(seqs))
                    self._fail(seqs, RequestFailedError("the model failed while generating", exc))

    def _collect(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            if isinstance(item, SequenceState):
                self._waiting.append(item)
            elif isinstance(item, tuple):
                fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except Exception as exc:
                        fut.set_exception(exc)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _finished_one(self) -> None:
        self.stats.requests_finished += 1

    def _fail(self, seqs: list[SequenceState], exc: BaseException) -> None:
        """End these requests with `exc` (a request that already finished ignores it)."""
        for seq in seqs:
            seq.cancelled = True
            try:
                seq.emit(exc)
            except RuntimeError:  # the consumer's event loop is gone
                pass
        self._after_failure()

    def _fail_all(self, exc: BaseException) -> None:
        """At shutdown: end everything running, waiting or queued."""
        seqs = self._take_running() + list(self._waiting)
        self._waiting.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, SequenceState):
                seqs.append(item)
            elif isinstance(item, tuple) and item[1].set_running_or_notify_cancel():
                item[1].set_exception(exc)
        self._fail(seqs, exc)


async def stream_sequence(loop: ModelLoop, make_seq: Callable[[Emit], SequenceState], assembler: OutputAssembler,
                          prompt_entries: Callable[[PromptLogprobs], list[TokenLogprob]] | None = None
                          ) -> AsyncIterator[GenerationChunk]:
    """Submit one request and stream its chunks; closing the stream early cancels it. `prompt_entries` turns the
    prompt's log-probabilities, when the request asked for them, into its entries."""
    aloop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    seq = make_seq(lambda event: aloop.call_soon_threadsafe(events.put_nowait, event))
    loop.submit(seq)
    try:
        while not assembler.finished:
            event = await events.get()
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, PromptLogprobs):
                assert prompt_entries is not None
                assembler.push_prompt_logprobs(prompt_entries(event))
                continue
            chunk = assembler.push(event.token_ids, event.finish, event.hidden_last, event.logprobs)
            if chunk is not None:
                yield chunk
    finally:
        seq.cancelled = True  # no-op when it already finished; frees its batch row otherwise


class LocalEngine(PromptEngine):
    """An engine whose model runs in this process on a `ModelLoop`: the request path is the same
    for all of them (tokenize, check the window, build the sampler, stream the sequence)."""

    _loop: ModelLoop
    _vocab: SamplerFactory
    _context_length: int
    _vocab_size: int
    _eos_ids: frozenset[int]

    @abstractmethod
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]: ...

    @abstractmethod
    def _decode(self, ids) -> str: ...

    def stats(self) -> EngineStats:
        return self._loop.snapshot()

    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(await asyncio.to_thread(self._encode, text, add_special_tokens))

    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(await asyncio.to_thread(self._encode, text, add_special_tokens))

    async def detokenize(self, token_ids: list[int]) -> str:
        self._check_ids(token_ids, "token ids")
        return await asyncio.to_thread(self._decode_all, token_ids)

    @abstractmethod
    def _decode_all(self, ids) -> str:
        """The text of `ids` with special tokens written out (`_decode` leaves them out of replies)."""

    def _check_ids(self, ids: list[int], what: str) -> None:
        if not all(0 <= t < self._vocab_size for t in ids):
            # an id past the embedding table would fail the prefill (on CUDA: the whole process)
            bad = next(t for t in ids if not 0 <= t < self._vocab_size)
            raise InvalidRequestError(f"{what} must be ids of this model's vocabulary (0 to {self._vocab_size - 1}); "
                                      f"{bad} is not")

    supports_logprobs = supports_penalties = supports_guided = True

    async def _generate_prompt(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        params = request.params
        # Tokenizing a long prompt takes a while: not on the event loop, which serves every other stream.
        prompt_ids = request.prompt_token_ids or await asyncio.to_thread(self._encode, request.prompt or "",
                                                                         request.add_special_tokens)
        if request.prompt_token_ids:
            self._check_ids(prompt_ids, "prompt token ids")
        if len(prompt_ids) >= self._context_length:
            raise ContextLengthError(len(prompt_ids), self._context_length)
        top_n = request.prompt_logprobs
        assembler = OutputAssembler(self._decode, params.stop, len(prompt_ids), all_logprobs=top_n is not None)
        if params.max_new_tokens == 0 and top_n is None:  # nothing to compute
            yield assembler.push([], "length")
            return
        sampler = await self._vocab.sampler(params)
        prompt_entries = None
        if top_n is not None:
            factory = await self._vocab.factory()  # built by `sampler` already (logprobs are asked for)

            def prompt_entries(event: PromptLogprobs) -> list[TokenLogprob]:
                return event.entries(prompt_ids, lambda t: factory.tokenizer.decode_bytes([t]))

        def new_sequence(emit: Emit) -> SequenceState:
            asked = self._context_length if params.max_new_tokens is None else params.max_new_tokens
            return SequenceState(
                prompt_ids=list(prompt_ids), params=params,
                max_new_tokens=min(asked, self._context_length - len(prompt_ids)),
                stop_ids=frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self._eos_ids),
                emit=emit, sampler=sampler, prompt_logprobs=top_n)

        async for chunk in stream_sequence(self._loop, new_sequence, assembler, prompt_entries):
            yield chunk

    async def aclose(self) -> None:
        await asyncio.to_thread(self._loop.close)
