"""FastChat's worker protocol, served by a parley worker: an adapter over the native path.

A FastChat client (its `openai_api_server`, its Gradio UI, `test_message`) posts gen_params to
`/worker_generate_stream` and reads `\\0`-terminated JSON chunks whose `text` is the whole reply so
far, with FastChat's error codes. Here gen_params become the GenerationRequest the native stream
takes, and the engine's deltas are added up into FastChat's cumulative chunks. parley's own
extensions to gen_params (`messages`, `seed`, `min_p`, logprobs, tools, response_format) are read
too, so the FastChat protocol keeps working for the clients that used them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from parley.engines.base import (
    GenerationChunk,
    GenerationRequest,
    Message,
    SamplingParams,
    ToolCallsSoFar,
)
from parley.serving.protocol import ErrorCode, GenerateParams, WorkerChunk
from parley.serving.worker_errors import (
    WorkerError,
    failure_for_client,
    json_body,
    parsed,
    request_id_of,
    validation_message,
)

if TYPE_CHECKING:
    from parley.serving.worker import ModelWorker


def request_of_gen_params(raw: dict) -> GenerationRequest:
    """FastChat's gen_params as parley's request; a value out of range is a WorkerError with FastChat's code."""
    p = parsed(raw, GenerateParams, ErrorCode.VALIDATION_TYPE_ERROR)
    try:
        params = SamplingParams(
            temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
            repetition_penalty=p.repetition_penalty, presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty, max_new_tokens=p.max_new_tokens, stop=p.stop,
            stop_token_ids=p.stop_token_ids or [], seed=p.seed, ignore_eos=p.ignore_eos, logprobs=p.logprobs)
        messages = None if p.messages is None else [Message.model_validate(m) for m in p.messages]
        return GenerationRequest(
            model=p.model, messages=messages, prompt=None if messages is not None else (p.prompt or None),
            echo=p.echo, params=params, response_format=p.response_format, tools=p.tools, tool_choice=p.tool_choice,
            request_id=request_id_of(raw))
    except ValidationError as exc:  # a value out of range, or the request as a whole (no prompt, two of them)
        whole = any(e["type"] == "value_error" and not e["loc"] for e in exc.errors())
        raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR if whole else ErrorCode.PARAM_OUT_OF_RANGE,
                          validation_message(exc).removeprefix("Value error, ")) from None


class CumulativeReply:
    """Adds the engine's deltas up into FastChat's chunks: the text and the tool calls so far."""

    def __init__(self):
        self.text = ""
        self._calls = ToolCallsSoFar()

    def chunk(self, delta: GenerationChunk) -> WorkerChunk:
        self.text += delta.text
        self._calls.add(delta.tool_calls)
        usage = delta.usage
        return WorkerChunk(
            text=self.text, finish_reason=delta.finish_reason, tool_calls=self._calls.calls() or None,
            token_logprobs=[lp.model_dump() for lp in delta.logprobs] if delta.logprobs else None,
            usage=None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                              "completion_tokens": usage.completion_tokens,
                                              "total_tokens": usage.total_tokens})


async def cumulative_chunks(worker: ModelWorker, raw: dict, endpoint: str,
                            started: float) -> AsyncIterator[WorkerChunk]:
    """FastChat-style chunks for one request; a failure becomes a last chunk with an error code."""
    try:
        try:
            request = request_of_gen_params(raw)
        except WorkerError as exc:
            worker.refused(endpoint, exc.code, started)
            raise
        reply = CumulativeReply()
        async for delta in worker.generate(request, endpoint, started):
            yield reply.chunk(delta)
    except Exception as exc:  # an engine bug must reach the client as an error, not a hung stream
        code, message = failure_for_client(exc, request_id_of(raw), "generation")
        yield WorkerChunk(text=message, error_code=code)


def frame(chunk: WorkerChunk) -> bytes:
    return json.dumps(chunk.model_dump(exclude_none=True) | {"error_code": chunk.error_code}).encode() + b"\0"


def install_fastchat_routes(app: FastAPI, worker: ModelWorker) -> None:
    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> StreamingResponse:
        raw = await json_body(request)
        started = time.perf_counter()

        async def frames() -> AsyncIterator[bytes]:
            async for chunk in cumulative_chunks(worker, raw, "/worker_generate_stream", started):
                yield frame(chunk)

        return StreamingResponse(frames(), media_type="application/octet-stream")

    @app.post("/worker_generate")
    async def worker_generate(request: Request) -> JSONResponse:
        raw = await json_body(request)
        last = None
        async for chunk in cumulative_chunks(worker, raw, "/worker_generate", time.perf_counter()):
            last = chunk
        return JSONResponse(last.model_dump(exclude_none=True) | {"error_code": last.error_code})
