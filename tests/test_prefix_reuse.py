"""llama.cpp reuses the KV of recent prompts: each turn of a conversation prefills only what is new, and its
greedy reply is token for token what a cold engine (no prefix cache) gives. Real bundled model."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from parley.engines.base import GenerationRequest, Message, SamplingParams
from parley.engines.engine_options import LlamaCppOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (make installs it)")

SYSTEM = ("You are an environmental impact assessment expert. Answer briefly and precisely, citing the "
          "relevant stage of the assessment process where it helps.")
QUESTIONS = ["What is a scoping study?", "Who takes part in it?", "What comes after it?",
             "How long does that take?", "Summarize the whole process in one sentence."]


def engine(entries: int):
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    return LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(prefix_cache_entries=entries))


async def conversation(eng) -> list[list[int]]:
    messages = [Message(role="system", content=SYSTEM)]
    replies = []
    for question in QUESTIONS:
        messages.append(Message(role="user", content=question))
        reply = await eng.generate(GenerationRequest(messages=messages,
                                                     params=SamplingParams(temperature=0, max_new_tokens=40)))
        replies.append(reply.token_ids)
        messages.append(Message(role="assistant", content=reply.text))
    return replies


async def test_a_conversation_reuses_its_earlier_turns_and_answers_as_a_cold_engine_does():
    cold, warm = engine(0), engine(16)
    try:
        expected = await conversation(cold)
        got = await conversation(warm)
        assert cold.stats().cached_prompt_tokens == 0
        stats = warm.stats()
    finally:
        await asyncio.gather(cold.aclose(), warm.aclose())
    assert got == expected
    # turns 2 to 5 each start with the turn before (system prompt, questions, replies): most of it is reused
    assert stats.cached_prompt_tokens > 4 * 40


async def test_concurrent_requests_sharing_a_system_prompt_answer_as_alone():
    """Several requests at once, each starting with a prompt an earlier one left in the cache."""
    cold, warm = engine(0), engine(4)
    ask = [[Message(role="system", content=SYSTEM), Message(role="user", content=q)] for q in QUESTIONS]
    request = lambda m: GenerationRequest(messages=m, params=SamplingParams(temperature=0, max_new_tokens=24))  # noqa: E731
    try:
        expected = [(await cold.generate(request(m))).token_ids for m in ask]
        await warm.generate(request(ask[0]))  # leaves the system prompt in the cache
        got = [r.token_ids for r in await asyncio.gather(*(warm.generate(request(m)) for m in ask))]
        assert warm.stats().cached_prompt_tokens >= 4 * 20
    finally:
        await asyncio.gather(cold.aclose(), warm.aclose())
    assert got == expected


async def test_cached_prefixes_give_way_to_a_long_prompt_on_an_idle_engine():
    """Cached cells never keep a prompt that fits the window from being served, running alone or not."""
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    eng = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(n_ctx=512, prefix_cache_entries=8))
    try:
        for i in range(6):  # each leaves about 60 cells cached: the cache fills toward half the window
            await eng.generate(GenerationRequest(prompt=f"Note {i}: " + "the river runs to the sea. " * 6,
                                                 params=SamplingParams(temperature=0, max_new_tokens=16)))
        long_prompt = "Summarize: " + " ".join(f"item {i} is blue." for i in range(60))
        # and as it grows to the end of the window, the prefixes still cached give way too
        reply = await eng.generate(GenerationRequest(prompt=long_prompt, params=SamplingParams(
            temperature=0, max_new_tokens=90, ignore_eos=True)))
        assert reply.usage.prompt_tokens > 256 and reply.usage.completion_tokens == 90
    finally:
        await eng.aclose()


async def test_requests_arriving_together_share_their_common_prompt_while_it_is_computed():
    """No earlier request left the system prompt behind: the first of several simultaneous requests computes
    it once and the others take its cells as soon as they are there, answering as they do alone."""
    cold, warm = engine(0), engine(4)
    ask = [[Message(role="system", content=SYSTEM), Message(role="user", content=q)] for q in QUESTIONS]
    request = lambda m: GenerationRequest(messages=m, params=SamplingParams(temperature=0, max_new_tokens=24))  # noqa: E731
    try:
        expected = [(await cold.generate(request(m))).token_ids for m in ask]
        shared = len(warm._encode(SYSTEM, False))  # the common part holds the system prompt and more
        got = [r.token_ids for r in await asyncio.gather(*(warm.generate(request(m)) for m in ask))]
        reused = warm.stats().cached_prompt_tokens
    finally:
        await asyncio.gather(cold.aclose(), warm.aclose())
    assert got == expected
    assert reused >= (len(ask) - 1) * shared


FIRST = 4  # tokens compared where long prompts decode side by side


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
async def test_a_shared_prompt_longer_than_one_batch_and_a_leader_that_goes_away():
    """The common part takes several prefill steps (over n_batch tokens): the others wait for it and then
    answer as they do alone; when the request computing it is cancelled midway, they carry on without it.
    Their first tokens are compared: further on, two near-equal logits can swap with what else shares a
    step's batch (llama.cpp's F16 products tile by batch size), with or without reuse (1 run in ~10)."""
    document = " ".join(f"Section {i}: the permit for site {i} requires a noise survey." for i in range(50))
    ask = [[Message(role="system", content=SYSTEM + " " + document), Message(role="user", content=q)]
           for q in QUESTIONS[:3]]
    request = lambda m: GenerationRequest(messages=m, params=SamplingParams(temperature=0, max_new_tokens=16))  # noqa: E731
    cold, warm = engine(0), engine(4)
    try:
        expected = [(await cold.generate(request(m))).token_ids for m in ask]
        assert len(warm._encode(document, False)) > 600
        got = [r.token_ids for r in await asyncio.gather(*(warm.generate(request(m)) for m in ask))]
        assert [g[:FIRST] for g in got] == [e[:FIRST] for e in expected]
        assert warm.stats().cached_prompt_tokens >= 2 * 600

        fresh = [[Message(role="system", content="Notes. " + document), m[1]] for m in ask]
        first = asyncio.create_task(warm.generate(request(fresh[0])))
        await asyncio.sleep(0)  # submitted first: the others follow it
        others = [asyncio.create_task(warm.generate(request(m))) for m in fresh[1:]]
        await asyncio.sleep(0.05)  # mid-prefill
        first.cancel()
        replies = await asyncio.gather(*others)
    finally:
        await asyncio.gather(cold.aclose(), warm.aclose())
    alone = engine(0)
    try:
        assert [r.token_ids[:FIRST] for r in replies] == [
            (await alone.generate(request(m))).token_ids[:FIRST] for m in fresh[1:]]
    finally:
        await alone.aclose()


async def test_the_worker_reports_the_prompt_tokens_it_reused():
    from tests.test_worker import client_for

    eng = engine(4)
    try:
        async with client_for(eng) as w:
            for question in QUESTIONS[:2]:
                r = await w.post("/worker_generate_stream", json={
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                    "temperature": 0, "max_new_tokens": 4})
                assert r.status_code == 200
            metrics = (await w.get("/metrics")).text
    finally:
        await eng.aclose()
    reused = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("parley_prompt_tokens_reused{")]
    assert reused and reused[0] >= len(eng._encode(SYSTEM, False))
