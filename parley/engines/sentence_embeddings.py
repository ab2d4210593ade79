"""`sentence-transformers`: a dedicated embedding model (all-MiniLM-L6-v2 and its kind).

Embeddings come from the sentence-transformers library itself (its pooling and normalization
as configured in the model directory), so vectors match what that library gives. Such a
model does not generate text: chat and completion requests to it are refused clearly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from parley.engines.base import (
    EmbeddingResult,
    Engine,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
)
from parley.engines.engine_options import SentenceTransformersOptions
from parley.errors import ContextLengthError, InvalidRequestError, ParleyError
from parley.models.source import ModelSource, SourceKind


class SentenceEmbeddingEngine(Engine):
    name = "sentence-transformers"

    def __init__(self, model, model_name: str, device: str):
        self._model = model
        self._lock = threading.Lock()  # one encode at a time on the model
        self._info = ModelInfo(name=model_name, engine=self.name, context_length=int(model.max_seq_length),
                               device=device, dtype="float32",
                               num_parameters=sum(p.numel() for p in model.parameters()))

    @classmethod
    def create(cls, source: ModelSource, options: SentenceTransformersOptions) -> SentenceEmbeddingEngine:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ParleyError("the sentence-transformers engine needs: pip install 'parley[embeddings]'") from None
        if source.kind == SourceKind.GGUF:
            raise ParleyError("the sentence-transformers engine serves Hugging Face model directories, not GGUF files")
        device = "cpu" if options.device == "auto" else options.device
        if options.device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = SentenceTransformer(source.location, device=device, local_files_only=source.kind != SourceKind.HUB,
                                    trust_remote_code=options.trust_remote_code)
        return cls(model, options.model_name or source.name, device)

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise InvalidRequestError(f"{self._info.name} is an embedding model: use /v1/embeddings")
        yield  # pragma: no cover  (an async generator that refuses at once)

    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts:
            return EmbeddingResult(embeddings=[], prompt_tokens=0)
        return await asyncio.to_thread(self._embed_now, texts)

    def _embed_now(self, texts: list[str]) -> EmbeddingResult:
        tokenizer = self._model.tokenizer
        counts = [len(tokenizer(t)["input_ids"]) for t in texts]
        limit = self._info.context_length
        for n in counts:
            if n > limit:  # sentence-transformers would truncate silently
                raise ContextLengthError(n, limit)
        with self._lock:
            vectors = self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return EmbeddingResult(embeddings=vectors.tolist(), prompt_tokens=sum(counts))
