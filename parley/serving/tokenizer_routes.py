"""vLLM's tokenizer endpoints on the API: `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`.

lm-evaluation-harness's `local-completions` model looks for them (`check_remote_tokenizer_support`) and, when they
answer, tokenizes through the served model's own tokenizer instead of downloading one from a hub. It sends no
model: with exactly one model served (that the API key may use), or one whose engine tokenizes for clients (the
embedding model of `parley serve` does not), that one is meant; otherwise the request must name one (`model` in
the body, or `?model=` for /tokenizer_info) and a 400 lists them. The API key is checked as
on every other route; these calls are not counted against rate limits (an evaluation tokenizes every request).
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from parley.engines.base import TokenId
from parley.serving.api_errors import APIError, bad_request
from parley.serving.cluster_client import Cluster
from parley.serving.cluster_errors import ClusterError
from parley.serving.key_auth import Caller, KeyAuth
from parley.serving.openai_schemas import ErrorResponse
from parley.serving.openai_serving import api_error
from parley.serving.protocol import MAX_DETOKENIZE_IDS, TokenizerInfo

TOKENIZES_TTL_S = 30.0

_ERRORS: dict = {status: {"model": ErrorResponse, "description": what} for status, what in {
    400: "the request is invalid (several models are served and none is named, a token id outside the vocabulary, "
         "an engine without a tokenizer)",
    401: "no API key, or a wrong one",
    404: "no such model, or one the API key may not use",
    413: "the request body is larger than the server accepts",
    500: "the server failed",
    502: "the worker failed", 503: "no worker serves the model now", 504: "the worker did not answer in time"}.items()}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None  # None: the one model served


class TokenizeBody(_Body):
    prompt: str
    add_special_tokens: bool = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeBody(_Body):
    tokens: list[TokenId] = Field(max_length=MAX_DETOKENIZE_IDS)


class DetokenizeResponse(BaseModel):
    prompt: str


def install_tokenizer_routes(app: FastAPI, cluster: Cluster, keys: KeyAuth) -> None:
    async def model_for(request: Request, named: str | None) -> str:
        """The model a request means: the one it names (which the key must be allowed), else the only one served."""
        caller: Caller = await keys.check(request.headers.get("authorization"))
        if named is not None:
            keys.check_model(caller, named)
            return named
        try:
            served = [m for m in await cluster.list_models() if caller.may_use(m)]
        except ClusterError as exc:
            raise api_error(exc) from None
        if len(served) > 1:  # the embedding model of `parley serve` does not tokenize for clients: not meant
            served = [m for m in served if await tokenizes(m)] or served
        if len(served) == 1:
            return served[0]
        if not served:
            raise APIError(503, "no model is served now", type="server_error", code="model_unavailable")
        raise bad_request(f"several models are served ({', '.join(sorted(served))}): name one with 'model'", "model")

    known: dict[str, tuple[float, bool]] = {}  # model: (when it was asked, whether its engine tokenizes)

    async def tokenizes(model: str) -> bool:
        """Whether the model's engine tokenizes for clients (asked once every TOKENIZES_TTL_S)."""
        asked = known.get(model)
        if asked is not None and time.monotonic() - asked[0] < TOKENIZES_TTL_S:
            return asked[1]
        try:
            await cluster.tokenize(model, "", False)
            answer = True
        except ClusterError as exc:
            if exc.status != 400:  # not the engine's refusal (unreachable, overloaded...): ask again next time
                return True
            answer = False
        if len(known) > 1000:  # models come and go: forget them all now and then
            known.clear()
        known[model] = (time.monotonic(), answer)
        return answer

    @app.get("/tokenizer_info", responses=_ERRORS)
    async def tokenizer_info(request: Request, model: str | None = None) -> TokenizerInfo:
        """The served model's special tokens, chat template and context window (vLLM's endpoint)."""
        name = await model_for(request, model)
        try:
            return await cluster.tokenizer_info(name)
        except ClusterError as exc:
            raise api_error(exc) from None

    @app.post("/tokenize", responses=_ERRORS)
    async def tokenize(body: TokenizeBody, request: Request) -> TokenizeResponse:
        """The model's token ids for a text (vLLM's endpoint); `add_special_tokens` adds BOS where the model's
        tokenizer does."""
        name = await model_for(request, body.model)
        try:
            reply = await cluster.tokenize(name, body.prompt, body.add_special_tokens)
        except ClusterError as exc:
            raise api_error(exc) from None
        return TokenizeResponse(count=reply.count, max_model_len=reply.max_model_len, tokens=reply.tokens)

    @app.post("/detokenize", responses=_ERRORS)
    async def detokenize(body: DetokenizeBody, request: Request) -> DetokenizeResponse:
        """The text of token ids, special tokens written out (vLLM's endpoint); an id outside the vocabulary is a
        400."""
        name = await model_for(request, body.model)
        try:
            reply = await cluster.detokenize(name, body.tokens)
        except ClusterError as exc:
            raise api_error(exc) from None
        return DetokenizeResponse(prompt=reply.prompt)
