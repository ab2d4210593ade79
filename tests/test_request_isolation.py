"""One bad request fails alone, on the real bundled model (issue 13).

The model is wrapped so that its forward pass (transformers) or its `llama_decode` (llama.cpp)
fails when the input holds a marker token sequence, as it would run out of memory on one long
prompt: that request ends at once with an error naming the cause, while a reply already
decoding goes on to the very tokens it gives alone, and later requests are served as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

from parley.engines.engine_options import LlamaCppOptions
from parley.errors import ParleyError
from parley.serving.protocol import ErrorCode
from tests.test_worker import client_for, frames

MARKER = " QUOKKA-ZEBRA-7731"
OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (simulated by this test)"
GOOD = "Write two sentences about rivers."
BAD = f"Repeat after me:{MARKER} please."
PROMPT_FAILED = "the model failed on this prompt: RuntimeError: CUDA out of memory"
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (make installs it)")


def holds(ids: Sequence[int], marker: Sequence[int]) -> bool:
    ids, marker = list(ids), list(marker)
    return any(ids[i: i + len(marker)] == marker for i in range(len(ids) - len(marker) + 1))


@contextlib.contextmanager
def failing_forward(module: torch.nn.Module, fails: Callable[[torch.Tensor], bool]) -> Iterator[list[tuple[int, ...]]]:
    """The real module, whose forward raises (before computing) when `fails(input_ids)`;
    yields the shapes of the `input_ids` it was called with."""
    shapes: list[tuple[int, ...]] = []

    def hook(_module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        shapes.append(tuple(ids.shape))
        if fails(ids):
            raise RuntimeError(OOM)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def marked(marker: list[int]) -> Callable[[torch.Tensor], bool]:
    return lambda ids: any(holds(row, marker) for row in ids.tolist())


@pytest.fixture(scope="module")
def marker_ids(engine) -> list[int]:
    return engine.tokenizer(MARKER, add_special_tokens=False)["input_ids"]


def long_reply(chat_request):
    return chat_request(GOOD, temperature=0, max_new_tokens=40, ignore_eos=True)


async def fails_fast(coro, match: str, within: float = 1.0) -> float:
    """Await `coro`, which must raise a ParleyError matching `match` within `within` seconds."""
    started = time.perf_counter()
    with pytest.raises(ParleyError, match=match):
        await asyncio.wait_for(coro, timeout=max(5.0, 5 * within))
    elapsed = time.perf_counter() - started
    assert elapsed < within, f"the failing request took {elapsed:.2f} s to end"
    return elapsed


# ---- transformers ---------------------------------------------------------------------------

async def test_a_prompt_the_model_fails_on_ends_alone_while_a_running_reply_goes_on(engine, chat_request, marker_ids):
    good = long_reply(chat_request)
    bad = chat_request(BAD, temperature=0, max_new_tokens=20)
    assert holds(engine.tokenizer(bad.prompt, add_special_tokens=False)["input_ids"], marker_ids)
    alone = await engine.generate(good)
    with failing_forward(engine.model, marked(marker_ids)):
        stream = engine.generate_stream(good)
        first = [await stream.__anext__() for _ in range(3)]  # decoding now
        await fails_fast(engine.generate(bad), PROMPT_FAILED)
        assert engine.stats().running == 1  # the reply being decoded is still there
        rest = [c async for c in stream]
    chunks = first + rest
    assert [t for c in chunks for t in c.token_ids] == alone.token_ids
    assert "".join(c.text for c in chunks) == alone.text
    assert chunks[-1].finish_reason == alone.finish_reason == "length"


async def test_a_request_after_the_failure_is_served_normally(engine, chat_request, marker_ids):
    good = chat_request(GOOD, temperature=0, max_new_tokens=24)
    alone = await engine.generate(good)
    with failing_forward(engine.model, marked(marker_ids)):
        await fails_fast(engine.generate(chat_request(BAD, temperature=0, max_new_tokens=20)), PROMPT_FAILED)
        after = await asyncio.wait_for(engine.generate(good), timeout=60)
    assert after.token_ids == alone.token_ids and after.text == alone.text
    await settled(engine)


async def settled(engine) -> None:
    """Nothing is left running or waiting (the model thread drops a finished row just after its last token)."""
    for _ in range(50):
        stats = engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"requests left in the engine: {engine.stats()}")


async def test_prompts_prefilled_with_a_failing_one_are_retried_alone(engine, chat_request, marker_ids):
    good = chat_request(GOOD, temperature=0, max_new_tokens=24)
    bad = chat_request(BAD, temperature=0, max_new_tokens=20)
    alone = await engine.generate(good)
    with failing_forward(engine.model, marked(marker_ids)) as shapes:
        engine._loop.call(lambda: time.sleep(0.5))  # hold the model thread: both requests arrive together
        ok, failed = await asyncio.wait_for(
            asyncio.gather(engine.generate(good), engine.generate(bad), return_exceptions=True), timeout=60)
    assert isinstance(failed, ParleyError) and str(failed).startswith(PROMPT_FAILED), failed
    assert not isinstance(ok, BaseException), ok
    assert ok.token_ids == alone.token_ids
    prefills = [s for s in shapes if s[1] > 1]
    assert [s[0] for s in prefills] == [2, 1, 1]  # together (failed), then each alone: the good one passes


async def test_a_failed_decoding_step_ends_the_running_batch_clearly_and_the_engine_goes_on(engine, chat_request):
    armed: list[bool] = []

    def once_while_decoding(ids: torch.Tensor) -> bool:
        if armed and ids.shape[1] == 1:  # a decoding step (one new token per row)
            armed.clear()
            return True
        return False

    good = chat_request(GOOD, temperature=0, max_new_tokens=24)
    alone = await engine.generate(good)
    with failing_forward(engine.model, once_while_decoding):
        stream = engine.generate_stream(long_reply(chat_request))
        [await stream.__anext__() for _ in range(3)]
        armed.append(True)

        async def rest() -> None:
            async for _ in stream:
                pass

        await fails_fast(rest(), "the model failed while generating: RuntimeError: CUDA out of memory")
        after = await asyncio.wait_for(engine.generate(good), timeout=60)
    assert after.token_ids == alone.token_ids


async def test_the_worker_ends_the_failing_prompts_stream_with_an_error_and_serves_the_other(engine, marker_ids, caplog):
    def body(content: str) -> dict:
        return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_new_tokens": 24,
                "request_id": "chatcmpl-test-1"}

    async with client_for(engine) as w:
        alone = frames((await w.post("/worker_generate_stream", json=body(GOOD))).content)[-1]
        with failing_forward(engine.model, marked(marker_ids)):
            good, bad = await asyncio.wait_for(asyncio.gather(
                w.post("/worker_generate_stream", json=body(GOOD)),
                w.post("/worker_generate_stream", json=body(BAD))), timeout=60)
    [error] = frames(bad.content)
    # the client learns that it failed and under which request id; the cause (CUDA...) only the worker's log
    assert error["error_code"] == ErrorCode.INTERNAL_ERROR
    assert error["text"] == "the generation failed in the worker (request chatcmpl-test-1; its log has the details)"
    assert any("chatcmpl-test-1" in r.getMessage() and PROMPT_FAILED in r.getMessage() for r in caplog.records)
    last = frames(good.content)[-1]
    assert last["error_code"] == 0 and last["text"] == alone["text"] and last["finish_reason"] == alone["finish_reason"]


async def test_an_embedding_input_the_model_fails_on_gets_an_error_reply_and_the_others_are_served(engine, marker_ids,
                                                                                                  caplog):
    async with client_for(engine) as w:
        with failing_forward(engine.model.base_model, marked(marker_ids)):
            bad, good, reply = await asyncio.wait_for(asyncio.gather(
                w.post("/worker_get_embeddings", json={"model": "m", "input": ["The cat sat.", f"A{MARKER} sat."],
                                                       "request_id": "embd-test-2"}),
                w.post("/worker_get_embeddings", json={"model": "m", "input": ["The cat sat."]}),
                w.post("/worker_generate_stream", json={"prompt": "The capital of France is", "temperature": 0,
                                                        "max_new_tokens": 8})), timeout=60)
    assert bad.json() == {"text": "the embedding failed in the worker (request embd-test-2; its log has the details)",
                          "error_code": ErrorCode.INTERNAL_ERROR}
    assert any("embd-test-2" in r.getMessage() and OOM in r.getMessage() for r in caplog.records)
    assert len(good.json()["embedding"]) == 1
    assert frames(reply.content)[-1]["finish_reason"] == "length"


# ---- llama.cpp --------------------------------------------------------------------------------

class FailingDecode:
    """The llama_cpp module as the engine's loop uses it, with `llama_decode` failing (returning
    llama.cpp's "compute failed", -3) for a batch that holds the marker."""

    def __init__(self, lib, marker: list[int]):
        self._lib, self._marker = lib, marker
        self.failed = 0

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def llama_decode(self, ctx, batch) -> int:
        if holds([batch.token[i] for i in range(batch.n_tokens)], self._marker):
            self.failed += 1
            return -3
        return self._lib.llama_decode(ctx, batch)


@pytest.fixture(scope="module")
async def llama_engine():
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    eng = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(n_ctx=4096))
    yield eng
    await eng.aclose()


@pytest.fixture
def failing_llama(llama_engine, monkeypatch) -> FailingDecode:
    loop = llama_engine._loop
    wrapped = FailingDecode(loop._lib, llama_engine._encode(MARKER, False))
    monkeypatch.setattr(loop, "_lib", wrapped)
    return wrapped


@needs_llama_cpp
async def test_llamacpp_a_prompt_that_fails_ends_alone_while_a_running_reply_goes_on(llama_engine, failing_llama,
                                                                                   chat_request):
    good = long_reply(chat_request)
    alone = await llama_engine.generate(good)
    stream = llama_engine.generate_stream(good)
    first = [await stream.__anext__() for _ in range(3)]
    await fails_fast(llama_engine.generate(chat_request(BAD, temperature=0, max_new_tokens=20)),
                     "the model failed on this prompt: RuntimeError: llama_decode returned -3")
    rest = [c async for c in stream]
    assert failing_llama.failed == 2  # with the running reply's token, then alone: the reply's part passed
    assert [t for c in first + rest for t in c.token_ids] == alone.token_ids
    after = await asyncio.wait_for(llama_engine.generate(good), timeout=60)
    assert after.token_ids == alone.token_ids
    await settled(llama_engine)


async def test_min_p_one_on_llama_cpp_gives_the_greedy_reply(llama_engine, chat_request):
    """The llama.cpp engine chooses tokens with the same sampler: min_p works there too."""
    question = "What is the capital of France?"
    greedy = await llama_engine.generate(chat_request(question, temperature=0, max_new_tokens=20))
    pinned = await llama_engine.generate(chat_request(question, temperature=1.0, min_p=1.0, seed=5, max_new_tokens=20))
    assert pinned.token_ids == greedy.token_ids
