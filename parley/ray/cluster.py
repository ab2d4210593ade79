"""The models of a Ray Serve application, through their deployment handles: what the API and the web UI ask of
them (parley.serving.cluster_client's `Cluster`), as `ClusterClient` answers it for a controller and its workers.

Each model application's replicas run a parley worker (parley.ray.replica). Serve's router sends each request to
the replica with the shorter queue (of two drawn; of the two there are, with two replicas), streams come back
through `handle.options(stream=True)`, and a replica lost before its reply starts is tried again on another one.
A replica lost mid-reply ends that reply with an error within seconds, as a worker lost mid-reply does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from parley.engines.base import GenerationChunk, GenerationRequest
from parley.serving.cluster_client import within_window
from parley.serving.cluster_errors import (
    ClusterError,
    ModelNotFound,
    ModelUnavailable,
    RequestRejected,
    WorkerFailed,
    WorkerTimeout,
)
from parley.serving.protocol import (
    DetokenizeReply,
    DetokenizeRequest,
    EmbeddingsRequest,
    TokenizeReply,
    TokenizeRequest,
    TokenizerError,
    TokenizerInfo,
)

log = logging.getLogger("parley.ray")

# A replica that died, or that Serve could not reach: the request may go to another one (before its reply starts).
_LOST = (RayActorError, DeploymentUnavailableError)
Discover = Callable[[], Awaitable[dict[str, DeploymentHandle]]]
_LEARN_TIMEOUT_S = 120.0  # a model loading takes this long at most before it is asked again


def _refused(model: str, method: str, exc: Exception) -> ClusterError:
    """A request the deployment refused (every replica full: 429) or failed (500), as the API answers it."""
    if isinstance(exc, BackPressureError):
        return ClusterError(f"every replica of '{model}' is full; retry later", 429, "rate_limit_exceeded",
                            type="rate_limit_error")
    log.error("a replica of %s failed %s: %r", model, method, exc)
    return WorkerFailed(f"the replica serving '{model}' failed; please retry")


async def _next_within(stream, seconds: float):
    """The stream's next piece, or TimeoutError after `seconds`: asyncio.timeout where there is one (Python 3.11+),
    which makes no task a piece as asyncio.wait_for does."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await stream.__anext__()
    return await asyncio.wait_for(stream.__anext__(), seconds)


class ServeCluster:
    """`discover`: the model applications serving now, each with its deployment's handle; what each serves is asked
    of it (its worker's `--model-names`, or the model's own name), so nothing needs to know a name before the model
    loads. `clamp_max_tokens`: a `max_new_tokens` beyond the model's window is cut to it (the web UI) rather than
    refused (the API). `silence_s`: the longest wait for the next piece of a reply. `refresh_s`: how old the list
    of applications may be before it is asked again (a model added appears within it)."""

    def __init__(self, discover: Discover, attempts: int = 3, clamp_max_tokens: bool = False,
                 silence_s: float = 120.0, refresh_s: float = 3.0):
        self.discover = discover
        self.attempts = attempts
        self.clamp_max_tokens = clamp_max_tokens
        self.silence_s = silence_s
        self.refresh_s = refresh_s
        self._apps: dict[str, tuple[DeploymentHandle, dict]] = {}  # application -> its handle and model details
        self._by_name: dict[str, tuple[DeploymentHandle, dict]] = {}
        self._learning: dict[str, asyncio.Task] = {}
        self._found_at = -math.inf
        self._background: asyncio.Task | None = None

    # -- which application serves a name ----------------------------------------------------

    async def _refresh(self) -> None:
        """Ask which model applications serve now; a new one is asked what it serves in the background (its
        replicas may still be loading the model)."""
        try:
            found = await self.discover()
        except Exception as exc:  # Serve's controller is away for a moment: keep what is known
            log.warning("cannot list Serve's applications (%s); keeping the %d known", type(exc).__name__,
                        len(self._apps))
            return
        self._found_at = time.monotonic()
        self._apps = {name: known for name, known in self._apps.items() if name in found}
        for name, handle in found.items():
            if name not in self._apps and name not in self._learning:
                self._learning[name] = asyncio.create_task(self._learn(name, handle))
        self._index()

    async def _learn(self, app: str, handle: DeploymentHandle) -> None:
        try:  # an application whose replicas never start is asked again at a later refresh
            details = await asyncio.wait_for(handle.details.remote(), _LEARN_TIMEOUT_S)
        except Exception as exc:
            log.warning("the model application %s did not say what it serves (%s)", app, type(exc).__name__)
        else:
            self._apps[app] = (handle, details)
            self._index()
            log.info("model application %s serves %s", app, ", ".join(details["model_names"]))
        finally:
            self._learning.pop(app, None)

    def _index(self) -> None:
        self._by_name = {name: known for known in self._apps.values() for name in known[1]["model_names"]}

    def _refresh_soon(self) -> None:
        if time.monotonic() - self._found_at > self.refresh_s and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._refresh())

    async def _model(self, model: str) -> tuple[DeploymentHandle, dict]:
        found = self._by_name.get(model)
        if found is not None:
            self._refresh_soon()
            return found
        await self._refresh()  # a model added since: wait a little for it to say its names
        if self._learning:
            await asyncio.wait(list(self._learning.values()), timeout=10.0)
        found = self._by_name.get(model)
        if found is None:
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        return found

    async def list_models(self) -> list[str]:
        if time.monotonic() - self._found_at > self.refresh_s:
            await self._refresh()
            if not self._apps and self._learning:  # just started: wait for the models to answer
                await asyncio.wait(list(self._learning.values()), timeout=10.0)
        return sorted(self._by_name)

    # -- generation ------------------------------------------------------------------------

    async def generate_stream(self, model: str, request: GenerationRequest,
                              worker: str | None = None) -> AsyncIterator[GenerationChunk]:
        """The reply's deltas from a replica of the model's deployment (`worker` has no meaning here: Serve
        picks the replica). Errors as `ClusterError`s, as `ClusterClient` raises them."""
        handle, details = await self._model(model)
        sent = within_window(request, int(details.get("context_length") or 2048), self.clamp_max_tokens)
        streaming = handle.options(stream=True)
        for attempt in range(1, self.attempts + 1):
            stream = streaming.generate.remote(sent)
            started = finished = False
            try:
                while True:
                    try:
                        frame = await _next_within(stream, self.silence_s)
                    except StopAsyncIteration:
                        finished = True
                        return
                    except TimeoutError:
                        raise WorkerTimeout(f"the model '{model}' sent nothing for {self.silence_s:.0f} s") from None
                    error = getattr(frame, "error", None)
                    if error is not None:
                        finished = True
                        raise RequestRejected.from_worker(error.code, error.message)
                    started = True
                    yield frame
            except _LOST as exc:
                if started:
                    log.error("a replica of %s failed mid-reply (%s)", model, type(exc).__name__)
                    raise WorkerFailed(f"the replica serving '{model}' stopped while answering; please retry") from None
                log.warning("a replica of %s was lost before answering (%s); attempt %d of %d", model,
                            type(exc).__name__, attempt, self.attempts)
                await asyncio.sleep(0.2 * attempt)
            except (BackPressureError, RayError) as exc:
                raise _refused(model, "generate", exc) from None
            finally:
                if not finished:
                    stream.cancel()  # the client left, or the reply failed: the replica stops generating
        raise ModelUnavailable(f"no replica of the model '{model}' could answer; try again later")

    # -- requests that may be asked again ---------------------------------------------------------

    async def _call(self, model: str, method: str, *args, **kwargs):
        handle, _ = await self._model(model)
        for attempt in range(1, self.attempts + 1):
            try:
                return await getattr(handle, method).remote(*args, **kwargs)
            except _LOST as exc:
                log.warning("a replica of %s was lost before answering %s (%s); attempt %d of %d", model, method,
                            type(exc).__name__, attempt, self.attempts)
                await asyncio.sleep(0.2 * attempt)
            except (BackPressureError, RayError) as exc:
                raise _refused(model, method, exc) from None
        raise ModelUnavailable(f"no replica of the model '{model}' could answer; try again later")

    async def embed(self, model: str, texts: list[str], request_id: str | None = None) -> dict:
        answer = await self._call(model, "embed", EmbeddingsRequest(input=texts, request_id=request_id))
        if answer.get("error_code"):
            raise RequestRejected.from_worker(int(answer["error_code"]), str(answer.get("text")))
        return answer

    async def _tokenizer(self, model: str, method: str, *args):
        answer = await self._call(model, method, *args)
        if isinstance(answer, TokenizerError):
            raise RequestRejected.from_worker(answer.error.code, answer.error.message)
        return answer

    async def tokenize(self, model: str, text: str, add_special_tokens: bool = True) -> TokenizeReply:
        return await self._tokenizer(model, "tokenize", TokenizeRequest(prompt=text, add_special_tokens=add_special_tokens))

    async def detokenize(self, model: str, token_ids: list[int]) -> DetokenizeReply:
        return await self._tokenizer(model, "detokenize", DetokenizeRequest(tokens=token_ids))

    async def tokenizer_info(self, model: str) -> TokenizerInfo:
        return await self._tokenizer(model, "tokenizer_info")

