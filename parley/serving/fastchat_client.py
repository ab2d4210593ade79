"""The cluster client talking to a FastChat worker: parley's request as FastChat's gen_params, FastChat's
cumulative `\\0`-framed chunks back as deltas.

A FastChat worker takes only a rendered `prompt`: the conversation is rendered here with the worker's
own conversation template (from `/worker_get_conv_template`), whose stops join the request's. What a
FastChat worker cannot do (tools, structured output, log-probabilities, min_p) is refused before
anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from parley.engines.base import GenerationChunk, GenerationRequest, Usage
from parley.errors import InvalidRequestError
from parley.serving.cluster_errors import RequestRejected
from parley.serving.protocol import StreamError, StreamFrame

if TYPE_CHECKING:
    from parley.serving.cluster_client import WorkerInfo


def gen_params(info: WorkerInfo, request: GenerationRequest) -> dict:
    p = request.params
    for field, given in (("tools", request.tools), ("response_format", request.response_format),
                         ("logprobs", p.logprobs), ("min_p", p.min_p or None)):
        if given is not None:
            raise RequestRejected(f"'{field}' is not supported by the FastChat worker serving this model", param=field)
    if request.prompt_token_ids is not None:
        raise RequestRejected("token-id prompts are not supported by the FastChat worker serving this model",
                              param="prompt")
    if p.max_new_tokens == 0:
        raise RequestRejected("max_tokens 0 is not supported by the FastChat worker serving this model",
                              param="max_tokens")
    prompt = request.prompt
    if request.messages is not None:
        try:
            rendered = info.formatter.render([m.model_dump(exclude_none=True) for m in request.messages],
                                             continue_final=request.continue_final_message)
        except InvalidRequestError as exc:
            raise RequestRejected(str(exc), param="messages") from None
        prompt, p = rendered.text, p.with_stops(rendered.stop, rendered.stop_token_ids)
    return {"model": request.model, "prompt": prompt, "temperature": p.temperature, "top_p": p.top_p,
            "top_k": p.top_k or -1, "repetition_penalty": p.repetition_penalty,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            # A FastChat worker caps this to the room left in its window.
            "max_new_tokens": p.max_new_tokens or info.context_length,
            "stop": p.stop or None, "stop_token_ids": p.stop_token_ids or None, "echo": request.echo, "seed": p.seed,
            "request_id": request.request_id}


async def deltas(response: httpx.Response) -> AsyncIterator[StreamFrame]:
    """FastChat's chunks (the whole text so far) as deltas; an error chunk as an error frame."""
    seen = ""
    buffer = b""
    async for raw in response.aiter_raw():
        buffer += raw
        while (end := buffer.find(b"\0")) >= 0:
            data, buffer = buffer[:end], buffer[end + 1:]
            if not data:
                continue
            chunk = json.loads(data)
            if chunk.get("error_code"):
                yield StreamFrame(error=StreamError(code=int(chunk["error_code"]), message=str(chunk.get("text", ""))))
                return
            text = chunk.get("text", "")
            new = text[len(seen):] if text.startswith(seen) else text
            seen = text
            usage = chunk.get("usage") or None
            finish = chunk.get("finish_reason")
            yield StreamFrame(**GenerationChunk(
                text=new, finish_reason=finish if finish in ("stop", "length") else ("stop" if finish else None),
                usage=Usage(prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=usage.get("completion_tokens", 0)) if usage and finish else None,
            ).model_dump())
