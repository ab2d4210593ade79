"""How the API reaches models: ask the controller for a worker, talk to it, survive its death.

A worker that cannot be reached before a reply starts is reported to the controller (which
drops it after checking) and the request goes to another worker of the model. A worker that
dies mid-reply ends that reply with an error within seconds, never a hang. FastChat workers,
which take only a rendered `prompt`, get one rendered here from their conversation template.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from parley.conversation.formatter import ChatFormatter
from parley.errors import InvalidRequestError
from parley.serving.api_errors import APIError
from parley.serving.fastchat_conv import named_template_from_fastchat
from parley.serving.protocol import KnownModelsResponse

log = logging.getLogger("parley.api")

# Before a reply starts, a connection refused or reset (a worker that died as it answered) means "this worker
# cannot serve it now": it is reported and the request goes to another worker. A timeout is not such a sign.
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError,
                     httpx.WriteError)
_MIDSTREAM_FAILURES = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteError)


@dataclass
class WorkerInfo:
    address: str
    context_length: int
    native: bool  # a parley worker: takes `messages` and renders them itself
    formatter: ChatFormatter | None  # for FastChat workers: their conversation template
    fetched_at: float


class WorkerGateway:
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
            raise APIError(503, f"the controller at {self.controller} is unreachable", type="server_error",
                           code="service_unavailable") from None
        if response.status_code == 404:
            raise LookupError(path)
        if response.status_code == 401:
            log.error("the controller %s refused this server: its cluster secret differs (or it needs one)",
                      self.controller)
            raise APIError(503, "the controller refused this server (cluster secret); see the server's log",
                           type="server_error", code="service_unavailable")
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
            raise APIError(503, f"no worker is serving the model '{model}' right now; try again later",
                           type="server_error", code="model_unavailable")
        raise APIError(404, f"The model '{model}' does not exist", code="model_not_found", param="model")

    async def report_failure(self, address: str, reason: str) -> None:
        try:
            await self._controller("/report_worker_failure", {"worker_name": address, "reason": reason})
        except (LookupError, APIError, httpx.HTTPError):
            pass

    # -- workers -------------------------------------------------------------------------

    async def worker_info(self, address: str) -> WorkerInfo:
        info = self._info.get(address)
        if info and time.monotonic() - info.fetched_at < self.info_ttl_s:
            return info
        details = await self._worker_json(address, "/model_details")
        native = bool((details.get("parley") or {}).get("messages"))
        formatter = None
        if not native:
            conv = (await self._worker_json(address, "/worker_get_conv_template")).get("conv")
            try:
                formatter = ChatFormatter(named=named_template_from_fastchat(conv))
            except (ValueError, TypeError, KeyError) as exc:
                raise APIError(500, f"the worker at {address} uses a chat template parley cannot render: {exc}",
                               type="server_error") from None
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

    async def _connect(self, model: str, payload: dict, path: str, fixed: str | None) -> tuple[str, httpx.Response]:
        """Open a worker stream, moving to another worker when one is unreachable (unless the
        caller named the worker)."""
        last_error = ""
        for _ in range(1 if fixed else self.attempts):
            address = fixed.rstrip("/") if fixed else await self.worker_for(model)
            try:
                info = await self.worker_info(address)
                body = self._worker_payload(info, payload)
                request = self.http.build_request("POST", address + path, json=body)
                response = await self.http.send(request, stream=True)
                if response.status_code != 200:
                    await response.aread()
                    await response.aclose()
                    raise _refused(address, response)
                return address, response
            except _CONNECT_FAILURES as exc:
                last_error = f"{type(exc).__name__}"
                log.warning("worker %s for %s unreachable (%s); reporting it and trying another", address, model, last_error)
                self._info.pop(address, None)
                if fixed:
                    raise APIError(503, f"cannot reach the worker at {address} ({last_error})", type="server_error",
                                   code="service_unavailable") from None
                await self.report_failure(address, last_error)
        raise APIError(503, f"no reachable worker serves the model '{model}' ({last_error})", type="server_error",
                       code="model_unavailable")

    def _worker_payload(self, info: WorkerInfo, payload: dict) -> dict:
        body = dict(payload)
        if body.get("max_new_tokens") is None and not info.native:
            body["max_new_tokens"] = info.context_length  # a FastChat worker caps it to the room left
        if (body.get("max_new_tokens") or 0) > info.context_length:
            if not self.clamp_max_tokens:
                raise APIError(400, f"max_tokens is {body['max_new_tokens']}, more than the model's context window of "
                                    f"{info.context_length} tokens", param="max_tokens", code="invalid_value")
            body["max_new_tokens"] = info.context_length
        if not info.native:
            for field in ("tools", "response_format", "logprobs"):
                if body.get(field) is not None:
                    raise APIError(400, f"'{field}' is not supported by the FastChat worker serving this model",
                                   param=field)
        if "messages" in body and not info.native:
            try:
                rendered = info.formatter.render(body.pop("messages"))
            except InvalidRequestError as exc:
                raise APIError(400, str(exc), param="messages") from None
            body["prompt"] = rendered.text
            stop = body.get("stop") or []
            body["stop"] = ([stop] if isinstance(stop, str) else list(stop)) + list(rendered.stop)
            body["stop_token_ids"] = list(body.get("stop_token_ids") or []) + list(rendered.stop_token_ids)
        return body

    async def generate_stream(self, model: str, payload: dict, worker: str | None = None) -> AsyncIterator[dict]:
        """Worker chunks (cumulative `text`, `error_code`, `usage`, `finish_reason`) for one reply,
        from the worker the controller picks (or from `worker`, when given).

        Errors reported by the worker come as chunks with a nonzero `error_code`; a worker lost
        mid-reply raises APIError(502)."""
        address, response = await self._connect(model, payload, "/worker_generate_stream", worker)
        buffer = b""
        try:
            async for raw in response.aiter_raw():
                buffer += raw
                while (end := buffer.find(b"\0")) >= 0:
                    frame, buffer = buffer[:end], buffer[end + 1:]
                    if frame:
                        yield json.loads(frame)
        except _MIDSTREAM_FAILURES as exc:
            log.error("worker %s failed mid-reply for %s: %s", address, model, type(exc).__name__)
            self._info.pop(address, None)
            await self.report_failure(address, f"failed mid-stream: {type(exc).__name__}")
            raise APIError(502, f"the worker serving '{model}' stopped while answering; please retry",
                           type="server_error", code="worker_failed") from None
        finally:
            await response.aclose()

    async def embed(self, model: str, texts: list[str], request_id: str | None = None) -> dict:
        """The worker's answer (`embedding`: one vector per text, `token_num`); its errors as APIError."""
        last_error = ""
        for _ in range(self.attempts):
            address = await self.worker_for(model)
            try:
                response = await self.http.post(address + "/worker_get_embeddings",
                                                json={"model": model, "input": texts, "request_id": request_id})
            except _CONNECT_FAILURES as exc:  # embeddings may be asked again: another worker gets them
                last_error = type(exc).__name__
                await self.report_failure(address, last_error)
                continue
            except httpx.TimeoutException:
                raise APIError(504, f"the worker serving '{model}' did not answer in time", type="server_error",
                               code="timeout") from None
            except httpx.HTTPError as exc:
                log.error("embedding request to %s failed: %r", address, exc)
                raise APIError(502, f"the worker serving '{model}' failed to answer", type="server_error",
                               code="worker_failed") from None
            return _embedding_answer(model, address, response, len(texts))
        raise APIError(503, f"no reachable worker serves the model '{model}' ({last_error})", type="server_error",
                       code="model_unavailable")


def _refused(address: str, response: httpx.Response) -> APIError:
    """A worker that answered, but not as a worker does (a 401 for a missing cluster secret, a proxy's error page)."""
    if response.status_code == 401:
        log.error("the worker %s refused this server: its cluster secret differs (or it needs one)", address)
    else:
        log.error("the worker %s answered %s with status %d: %s", address, response.request.url.path,
                  response.status_code, response.text[:500])
    return APIError(502, f"the worker at {address} refused the request (status {response.status_code})",
                    type="server_error", code="worker_failed")


def _embedding_answer(model: str, address: str, response: httpx.Response, count: int) -> dict:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error_code"):
        raise APIError.from_worker(int(answer["error_code"]), str(answer.get("text") or "the worker reported an error"))
    vectors = answer.get("embedding") if isinstance(answer, dict) else None
    if response.status_code == 401:
        raise _refused(address, response)
    if not isinstance(vectors, list) or len(vectors) != count:
        log.error("worker %s answered an embedding request with status %d: %s", address, response.status_code,
                  response.text[:500])
        raise APIError(502, f"the worker serving '{model}' gave an unreadable answer (status {response.status_code})",
                       type="server_error", code="worker_failed")
    return answer
