"""`echo`: a deterministic engine for testing the layers above the engine seam.

It "generates" the prompt back, word by word (a token is a run of non-spaces with its
trailing spaces), so tests of servers and clients get predictable text, token counts,
stops and finish reasons without a model. Never use it where inference itself is tested.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator

from parley.engines.assembler import OutputAssembler
from parley.engines.base import (
    EmbeddingResult,
    EngineOptions,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
)
from parley.engines.prompted import PromptEngine
from parley.errors import ContextLengthError, InvalidRequestError
from parley.models.source import ModelSource

_TOKEN = re.compile(r"\s*\S+\s*|\s+")


class EchoEngine(PromptEngine):
    """Echoes the prompt back, token by token (words and spaces): a model-free engine for tests and demos."""

    name = "echo"

    def __init__(self, model_name: str = "echo", context_length: int = 4096, delay_s: float = 0.0, dim: int = 16,
                 chat_template: str | None = None):
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []
        self._delay = delay_s
        self._dim = dim
        self._info = ModelInfo(name=model_name, engine=self.name, context_length=context_length, chat_template=chat_template)

    @classmethod
    def create(cls, source: ModelSource, options: EngineOptions) -> EchoEngine:
        # PARLEY_ECHO_DELAY_S slows each token down, so tests can hold a reply open (overload,
        # a worker killed mid-reply) without a real model.
        engine = cls(model_name=options.model_name or source.name, delay_s=float(os.environ.get("PARLEY_ECHO_DELAY_S", "0")))
        engine._conv_template = options.conv_template
        return engine

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def _tokenize(self, text: str) -> list[int]:
        ids = []
        for piece in _TOKEN.findall(text):
            if piece not in self._vocab:
                self._vocab[piece] = len(self._words)
                self._words.append(piece)
            ids.append(self._vocab[piece])
        return ids

    def _decode(self, ids) -> str:
        return "".join(self._words[i] for i in ids)

    async def _generate_prompt(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        ids = request.prompt_token_ids or self._tokenize(request.prompt or "")
        if request.prompt_token_ids and not all(t < len(self._words) for t in ids):
            raise InvalidRequestError(f"prompt_token_ids must be ids this echo engine has seen (0 to {len(self._words) - 1})")
        if len(ids) >= self._info.context_length:
            raise ContextLengthError(len(ids), self._info.context_length)
        params = request.params
        asked = self._info.context_length if params.max_new_tokens is None else params.max_new_tokens
        budget = min(asked, self._info.context_length - len(ids))
        out = ids[:budget]
        assembler = OutputAssembler(self._decode, params.stop, len(ids))
        if not out:  # max_tokens 0
            yield assembler.push([], "length")
            return
        for i, token in enumerate(out):
            if self._delay:
                await asyncio.sleep(self._delay)
            hidden = token in params.stop_token_ids
            finish = None
            if hidden:
                finish = "stop"
            elif i == len(out) - 1:
                finish = "length" if budget < len(ids) else "stop"  # echoing all of it is a natural end
            chunk = assembler.push([token], finish, hidden_last=hidden)
            if chunk is not None:
                yield chunk
            if assembler.finished:
                return

    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(_TOKEN.findall(text))

    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenize(text)

    async def detokenize(self, token_ids: list[int]) -> str:
        if not all(t < len(self._words) for t in token_ids):
            raise InvalidRequestError(f"token ids must be ids this echo engine has seen (0 to {len(self._words) - 1})")
        return self._decode(token_ids)

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            raw = [b - 127.5 for b in digest[: self._dim]]
            norm = sum(x * x for x in raw) ** 0.5 or 1.0
            vectors.append([x / norm for x in raw])
        return EmbeddingResult(embeddings=vectors, prompt_tokens=sum(len(_TOKEN.findall(t)) for t in texts))
