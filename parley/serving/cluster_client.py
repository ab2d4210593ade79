"""The cluster client: how the API, the web UI and `test-message` reach models.

Ask the controller for a worker, send it the GenerationRequest, stream its deltas back, survive
its death. A worker that cannot be reached before a reply starts is reported to the controller
(which drops it after checking) and the request goes to another worker of the model. A worker
that dies mid-reply ends that reply with an error within seconds, never a hang. parley workers
take the request as it is on the native stream; FastChat workers go through an adapter
(parley.serving.fastchat_client). Failures are this module's own errors (`ClusterError`): each
says what went wrong and carries the HTTP status and code an API would answer with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import httpx
from pydantic import BaseModel, ValidationError

from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationChunk, GenerationRequest
from parley.serving import fastchat_client
from parley.serving.cluster_errors import (
    ClusterError,
    ControllerUnavailable,
    ModelNotFound,
    ModelUnavailable,
    RequestRejected,
    WorkerFailed,
    WorkerTimeout,
)
from parley.serving.fastchat_conv import named_template_from_fastchat
from parley.serving.protocol import (
    DETOKENIZE_PATH,
    NATIVE_PROTOCOL,
    NATIVE_STREAM_PATH,
    TOKENIZE_PATH,
    TOKENIZER_INFO_PATH,
    DetokenizeReply,
    DetokenizeRequest,
    KnownModelsResponse,
    StreamFrame,
    TokenizeReply,
    TokenizeRequest,
    TokenizerError,
    TokenizerInfo,
)

log = logging.getLogger("parley.api")

# Before a reply starts, a connection refused or reset (a worker that died as it answered) means "this worker
# cannot serve it now": it is reported and the request goes to another worker. A timeout is not such a sign.
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError,
                     httpx.WriteError)
_MIDSTREAM_FAILURES = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteError)


class Cluster(Protocol):
    """What the API, the web UI and the tools ask of the models: `ClusterClient` (a controller and its workers over
    HTTP) answers it, and so does parley.ray's `ServeCluster` (Ray Serve deployments through their handles)."""

    async def list_models(self) -> list[str]: ...

    def generate_stream(self, model: str, request: GenerationRequest,
                        worker: str | None = None) -> AsyncIterator[GenerationChunk]: ...

    async def embed(self, model: str, texts: list[str], request_id: str | None = None) -> dict: ...

    async def tokenize(self, model: str, text: str, add_special_tokens: bool = True) -> TokenizeReply: ...

    async def detokenize(self, model: str, token_ids: list[int]) -> DetokenizeReply: ...

    async def tokenizer_info(self, model: str) -> TokenizerInfo: ...


@dataclass
class WorkerInfo:
    address: str
    context_length: int
    native: bool  # a parley worker: takes the GenerationRequest on the native stream
    formatter: ChatFormatter | None  # for FastChat workers: their conversation template
    fetched_at: float


class ClusterClient:
    """`clamp_max_tokens`: a `max_new_tokens` beyond the model's context window is cut to it (the web UI's
    slider) rather than refused with a 400 (the API, as OpenAI does)."""

    def __init__(self, http: httpx.AsyncClient, controller_address: str, info_ttl_s: float = 60.0, attempts: int = 3,
                 clamp_max_tokens: bool = False):
        self.http = http
        self.controller = controller_address.rstrip("/")
        self.info_ttl_s = info_ttl_s
        self.attempts = attempts
        self.clamp_max_tokens = clamp_max_tokens
        self._info: dict[str, WorkerInfo] = {}

    # -- the controller ------------------------------------------------------------------

    async def _controller(self, path: str, payload: dict | None = None) -> dict:
        try:
            response = await self.http.post(self.controller + path, json=payload or {}, timeout=10.0)
        except httpx.HTTPError as exc:
            log.error("controller %s unreachable: %s", self.controller, exc)
            raise ControllerUnavailable(f"the controller at {self.controller} is unreachable") from None
        if response.status_code == 404:
            raise LookupError(path)
        if response.status_code == 401:
            log.error("the controller %s refused this server: its cluster secret differs (or it needs one)",
                      self.controller)
            raise ControllerUnavailable("the controller refused this server (cluster secret); see the server's log")
        response.raise_for_status()
        return response.json()

    async def list_models(self) -> list[str]:
        return (await self._controller("/list_models"))["models"]

    async def worker_for(self, model: str) -> str:
        address = (await self._controller("/get_worker_address", {"model": model}))["address"]
        if address:
            return address.rstrip("/")
        try:
            known = KnownModelsResponse.model_validate(await self._controller("/known_models"))
            was_served = model in known.known
        except LookupError:  # a FastChat controller: it cannot tell
            was_served = False
        if was_served:
            raise ModelUnavailable(f"no worker is serving the model '{model}' right now; try again later")
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")

    async def report_failure(self, address: str, reason: str) -> None:
        try:
            await self._controller("/report_worker_failure", {"worker_name": address, "reason": reason})
        except (LookupError, ClusterError, httpx.HTTPError):
            pass

    # -- workers -------------------------------------------------------------------------

    async def worker_info(self, address: str) -> WorkerInfo:
        info = self._info.get(address)
        if info and time.monotonic() - info.fetched_at < self.info_ttl_s:
            return info
        details = await self._worker_json(address, "/model_details")
        native = (details.get("parley") or {}).get("protocol") == NATIVE_PROTOCOL
        formatter = None
        if not native:
            conv = (await self._worker_json(address, "/worker_get_conv_template")).get("conv")
            try:
                formatter = ChatFormatter(named=named_template_from_fastchat(conv))
            except (ValueError, TypeError, KeyError) as exc:
                raise WorkerFailed(f"the worker at {address} uses a chat template parley cannot render: {exc}") from None
        info = WorkerInfo(address, int(details.get("context_length") or 2048), native, formatter, time.monotonic())
        self._info[address] = info
        return info

    async def _worker_json(self, address: str, path: str) -> dict:
        response = await self.http.post(address + path, json={}, timeout=10.0)
        try:
            answer = response.json() if response.status_code == 200 else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _refused(address, response)
        return answer

    async def _connect(self, model: str, request: GenerationRequest, fixed: str | None) -> tuple[WorkerInfo, httpx.Response]:
        """Open a worker stream, moving to another worker when one is unreachable (unless the
        caller named the worker)."""
        last_error = ""
        for _ in range(1 if fixed else self.attempts):
            address = fixed.rstrip("/") if fixed else await self.worker_for(model)
            try:
                info = await self.worker_info(address)
                sent = within_window(request, info.context_length, self.clamp_max_tokens)
                if info.native:
                    body, path = sent.model_dump(mode="json", exclude_none=True), NATIVE_STREAM_PATH
                else:
                    body, path = fastchat_client.gen_params(info, sent), "/worker_generate_stream"
                response = await self.http.send(self.http.build_request("POST", address + path, json=body), stream=True)
                if response.status_code != 200:
                    await response.aread()
                    await response.aclose()
                    raise _refused(address, response)
                return info, response
            except _CONNECT_FAILURES as exc:
                last_error = f"{type(exc).__name__}"
                log.warning("worker %s for %s unreachable (%s); reporting it and trying another", address, model, last_error)
                self._info.pop(address, None)
                if fixed:
                    raise WorkerFailed(f"cannot reach the worker at {address} ({last_error})") from None
                await self.report_failure(address, last_error)
        raise ModelUnavailable(f"no reachable worker serves the model '{model}' ({last_error})")

    async def generate_stream(self, model: str, request: GenerationRequest,
                              worker: str | None = None) -> AsyncIterator[GenerationChunk]:
        """The reply's deltas, from the worker the controller picks (or from `worker`, when given). An error the
        worker reports is raised as RequestRejected (or WorkerFailed); a worker lost mid-reply as WorkerFailed."""
        info, response = await self._connect(model, request, worker)
        address = info.address
        frames = _native_frames(response) if info.native else fastchat_client.deltas(response)
        try:
            async for frame in frames:
                if frame.error is not None:
                    raise RequestRejected.from_worker(frame.error.code, frame.error.message)
                yield frame
        except _MIDSTREAM_FAILURES as exc:
            log.error("worker %s failed mid-reply for %s: %s", address, model, type(exc).__name__)
            self._info.pop(address, None)
            await self.report_failure(address, f"failed mid-stream: {type(exc).__name__}")
            raise WorkerFailed(f"the worker serving '{model}' stopped while answering; please retry") from None
        finally:
            await response.aclose()

    async def embed(self, model: str, texts: list[str], request_id: str | None = None) -> dict:
        """The worker's answer (`embedding`: one vector per text, `token_num`); its errors as APIError."""
        address, response = await self._post_repeatable(
            model, "/worker_get_embeddings", {"model": model, "input": texts, "request_id": request_id}, "embedding")
        return _embedding_answer(model, address, response, len(texts))

    async def _post_repeatable(self, model: str, path: str, body: dict, what: str, timeout: float | None = None,
                               native_only: bool = False) -> tuple[str, httpx.Response]:
        """A request that may be asked again (embeddings, the tokenizer): a worker that cannot be reached is reported
        and another one asked; the worker asked and its response. `native_only`: a FastChat worker is refused."""
        last_error = ""
        for _ in range(self.attempts):
            address = await self.worker_for(model)
            try:
                if native_only and not (await self.worker_info(address)).native:
                    raise RequestRejected(f"the model '{model}' is served by a FastChat worker, which has no {what} "
                                          "endpoints", param="model")
                extra = {"timeout": timeout} if timeout is not None else {}
                return address, await self.http.post(address + path, json=body, **extra)
            except _CONNECT_FAILURES as exc:
                last_error = type(exc).__name__
                self._info.pop(address, None)
                await self.report_failure(address, last_error)
            except httpx.TimeoutException:
                raise WorkerTimeout(f"the worker serving '{model}' did not answer in time") from None
            except httpx.HTTPError as exc:
                log.error("%s request to %s failed: %r", what, address, exc)
                raise WorkerFailed(f"the worker serving '{model}' failed to answer") from None
        raise ModelUnavailable(f"no reachable worker serves the model '{model}' ({last_error})")

    # -- the model's tokenizer (the API's /tokenize, /detokenize and /tokenizer_info) ---------------

    async def tokenize(self, model: str, text: str, add_special_tokens: bool = True) -> TokenizeReply:
        return TokenizeReply.model_validate(await self._tokenizer_call(
            model, TOKENIZE_PATH, TokenizeRequest(prompt=text, add_special_tokens=add_special_tokens)))

    async def detokenize(self, model: str, token_ids: list[int]) -> DetokenizeReply:
        return DetokenizeReply.model_validate(await self._tokenizer_call(
            model, DETOKENIZE_PATH, DetokenizeRequest(tokens=token_ids)))

    async def tokenizer_info(self, model: str) -> TokenizerInfo:
        return TokenizerInfo.model_validate(await self._tokenizer_call(model, TOKENIZER_INFO_PATH, None))

    async def _tokenizer_call(self, model: str, path: str, body: BaseModel | None) -> dict:
        """A parley worker's answer to one of its tokenizer endpoints; its refusal as RequestRejected."""
        address, response = await self._post_repeatable(model, path, body.model_dump() if body else {}, "tokenizer",
                                                         timeout=60.0, native_only=True)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 200 and isinstance(answer, dict):
            return answer
        try:
            error = TokenizerError.model_validate(answer).error
        except ValidationError:
            raise _refused(address, response) from None
        raise RequestRejected.from_worker(error.code, error.message)


def within_window(request: GenerationRequest, window: int, clamp: bool) -> GenerationRequest:
    """The request, if its `max_new_tokens` fits the model's context window; beyond it, cut to the window (`clamp`:
    the web UI's slider) or refused with a 400 (the API, as OpenAI does)."""
    asked = request.params.max_new_tokens
    if asked is None or asked <= window:
        return request
    if not clamp:
        raise RequestRejected(f"max_tokens is {asked}, more than the model's context window of {window} tokens",
                              param="max_tokens", code="invalid_value")
    return request.model_copy(update={"params": request.params.model_copy(update={"max_new_tokens": window})})


async def _native_frames(response: httpx.Response) -> AsyncIterator[StreamFrame]:
    async for line in response.aiter_lines():
        if line:
            yield StreamFrame.model_validate_json(line)


def _refused(address: str, response: httpx.Response) -> WorkerFailed:
    """A worker that answered, but not as a worker does (a 401 for a missing cluster secret, a proxy's error page)."""
    if response.status_code == 401:
        log.error("the worker %s refused this server: its cluster secret differs (or it needs one)", address)
    else:
        log.error("the worker %s answered %s with status %d: %s", address, response.request.url.path,
                  response.status_code, response.text[:500])
    return WorkerFailed(f"the worker at {address} refused the request (status {response.status_code})")


def _embedding_answer(model: str, address: str, response: httpx.Response, count: int) -> dict:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error_code"):
        raise RequestRejected.from_worker(int(answer["error_code"]), str(answer.get("text") or "the worker reported an error"))
    vectors = answer.get("embedding") if isinstance(answer, dict) else None
    if response.status_code == 401:
        raise _refused(address, response)
    if not isinstance(vectors, list) or len(vectors) != count:
        log.error("worker %s answered an embedding request with status %d: %s", address, response.status_code,
                  response.text[:500])
        raise WorkerFailed(f"the worker serving '{model}' gave an unreadable answer (status {response.status_code})")
    return answer
