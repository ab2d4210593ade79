"""A replica of a model deployment on Ray Serve: a parley worker's engine and its admission control
(`ModelWorker`, the same class `parley worker` serves over HTTP), configured by `parley worker`'s own flags.

Serve calls its methods through deployment handles (parley.ray.cluster); `generate` is a streaming method, one
`GenerationChunk` per delta. A request that fails says so in a `StreamFrame` or a `TokenizerError`, as the worker's
HTTP routes do, so a client learns what went wrong and nothing of the replica's internals.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator

from parley.cli.secret_args import cluster_secret
from parley.cli.worker_cmd import load_worker, parse_worker_flags
from parley.engines.base import GenerationChunk, GenerationRequest
from parley.serving.metrics import ServerMetrics
from parley.serving.protocol import (
    DetokenizeReply,
    DetokenizeRequest,
    EmbeddingsRequest,
    StreamError,
    TokenizeReply,
    TokenizeRequest,
    TokenizerError,
    TokenizerInfo,
)
from parley.serving.worker import ModelWorker
from parley.serving.worker_errors import failure_for_client

log = logging.getLogger("parley.worker")
ENDPOINT = "serve:generate"  # the worker's metrics' endpoint label for requests through Serve


class ModelReplica:
    def __init__(self, worker_flags: list[str]):
        if not logging.getLogger().handlers:  # a Ray worker process: parley's log lines go to its stderr file
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        args = parse_worker_flags(worker_flags)
        # llama.cpp's threads: without --n-threads, up to the replica's num_cpus (Ray sets $OMP_NUM_THREADS to it,
        # which parley.engines.thread_tuning.usable_cores reads), tuned while it serves as on a worker
        engine, settings = load_worker(args, cluster_secret(args), register=False)
        self.worker = ModelWorker(engine, settings, ServerMetrics("worker"))
        info = engine.model_info
        log.info("replica up (pid %d): %s (%s engine, %s, %s), models %s", os.getpid(), info.name, engine.name,
                 info.device, info.dtype, ", ".join(settings.model_names))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        log.info("request %s (pid %d)", request.request_id, os.getpid())
        async for chunk in self.worker.frames(request, ENDPOINT):
            yield chunk

    async def embed(self, body: EmbeddingsRequest) -> dict:
        return await self.worker.embed(body)

    async def tokenize(self, body: TokenizeRequest) -> TokenizeReply | TokenizerError:
        try:
            return await self.worker.tokenize(body)
        except Exception as exc:  # the engine cannot tokenize, or failed on this text
            return _tokenizer_error(exc, "tokenization")

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeReply | TokenizerError:
        try:
            return await self.worker.detokenize(body)
        except Exception as exc:
            return _tokenizer_error(exc, "detokenization")

    async def tokenizer_info(self) -> TokenizerInfo:
        return self.worker.tokenizer_info()

    def details(self) -> dict:
        """The worker's model details, the names it serves, and this replica's process (for `parley ray status`)."""
        return {**self.worker.details(), "model_names": self.worker.settings.model_names, "pid": os.getpid(),
                "in_flight": self.worker.in_flight}

    async def __del__(self):  # Serve awaits it when the replica is stopped (scale-down, redeploy, shutdown)
        await self.worker.engine.aclose()
        log.info("replica stopped (pid %d)", os.getpid())


def _tokenizer_error(exc: Exception, what: str) -> TokenizerError:
    code, message = failure_for_client(exc, f"wrk-{uuid.uuid4().hex[:16]}", what)
    return TokenizerError(error=StreamError(code=code, message=message))
