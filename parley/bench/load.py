"""Load generation against any OpenAI-compatible server: throughput, TTFT and inter-token latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import openai
from pydantic import BaseModel

from parley.bench.modes import MODES, RESPONSES_MODES

DEFAULT_PROMPT = "Write a long story about a dragon who learns to bake bread."

class RequestTiming(BaseModel):
    ttft_s: float
    latency_s: float
    output_tokens: int
    inter_token_s: list[float]  # gaps between streamed content events


APIS = ("chat", "responses")  # /v1/chat/completions, /v1/responses
# The Responses API's streamed events that carry output (what TTFT and inter-token gaps are measured on).
RESPONSES_OUTPUT_EVENTS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                                     "response.reasoning_text.delta"})


class LoadResult(BaseModel):
    api: str = "chat"
    mode: str = "plain"
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    requests_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    latency_s: dict[str, float]


def percentiles(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * scale

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "mean": statistics.fmean(ordered) * scale}


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int, ignore_eos: bool,
                      mode: str = "plain", api: str = "chat") -> RequestTiming:
    started = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    tokens = 0

    def output_now() -> None:
        nonlocal first, last
        now = time.perf_counter()
        if first is None:
            first = now
        else:
            gaps.append(now - last)
        last = now

    extra = {"extra_body": {"ignore_eos": True}} if ignore_eos else {}
    if api == "responses":
        stream = await client.responses.create(model=model, input=prompt, max_output_tokens=max_tokens, temperature=0,
                                               stream=True, **extra, **RESPONSES_MODES[mode])
        async for event in stream:
            if event.type in RESPONSES_OUTPUT_EVENTS and event.delta:
                output_now()
            elif event.type in ("response.completed", "response.incomplete") and event.response.usage is not None:
                tokens = event.response.usage.output_tokens
    else:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, **extra, **MODES[mode],
        )
        async for event in stream:
            if event.usage is not None:
                tokens = event.usage.completion_tokens
            delta = event.choices[0].delta if event.choices else None
            if delta is not None and (delta.content or delta.tool_calls or (delta.model_extra or {}).get("reasoning_content")):
                output_now()
    end = time.perf_counter()
    return RequestTiming(ttft_s=(first or end) - started, latency_s=end - started, output_tokens=tokens, inter_token_s=gaps)


async def run_load(base_url: str, model: str, concurrency: int, num_requests: int, max_tokens: int,
                   api_key: str | None = None, prompt: str = DEFAULT_PROMPT, ignore_eos: bool = False,
                   on_done: Callable[[], None] | None = None, mode: str = "plain", api: str = "chat") -> LoadResult:
    """`num_requests` requests, `concurrency` in flight at any time (each worker loop sends the next
    one as soon as its previous reply ends)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=600)
    timings: list[RequestTiming] = []
    failed = 0
    remaining = num_requests

    async def loop() -> None:
        nonlocal remaining, failed
        while remaining > 0:
            remaining -= 1
            try:
                timings.append(await one_request(client, model, prompt, max_tokens, ignore_eos, mode, api))
            except openai.APIError:
                failed += 1
            if on_done:
                on_done()

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await client.close()
    wall = time.perf_counter() - started
    tokens = sum(t.output_tokens for t in timings)
    return LoadResult(
        api=api, mode=mode, concurrency=concurrency, requests=len(timings), failed=failed, wall_s=wall, output_tokens=tokens,
        tokens_per_s=tokens / wall if wall else 0.0, requests_per_s=len(timings) / wall if wall else 0.0,
        ttft_ms=percentiles([t.ttft_s for t in timings], 1000),
        itl_ms=percentiles([g for t in timings for g in t.inter_token_s], 1000),
        latency_s=percentiles([t.latency_s for t in timings]),
    )
