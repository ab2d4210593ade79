"""`TransformersEngine`: the engine seam over a Hugging Face causal LM with continuous batching."""

from __future__ import annotations

import asyncio

import torch

from parley.engines.base import (
    EmbeddingResult,
    ModelInfo,
    RequestFailedError,
)
from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.batching import ContinuousBatcher
from parley.engines.hf.loading import LoadPlan, load_model_and_tokenizer
from parley.engines.model_loop import LocalEngine
from parley.engines.sampling import SamplerFactory
from parley.errors import ContextLengthError
from parley.models.source import ModelSource

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len", "max_sequence_length")


def context_length_of(model, tokenizer) -> int:
    for key in _CONTEXT_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def eos_ids_of(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i >= 0)


class TransformersEngine(LocalEngine):
    name = "transformers"

    def __init__(self, model, tokenizer, model_name: str, plan: LoadPlan, max_batch_size: int = 32):
        self._model = model
        self._tokenizer = tokenizer
        self._device = plan.device
        self._eos_ids = eos_ids_of(model, tokenizer)
        self._context_length = context_length_of(model, tokenizer)
        self._info = ModelInfo(
            name=model_name,
            engine=self.name,
            context_length=self._context_length,
            chat_template=getattr(tokenizer, "chat_template", None),
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
            device=plan.device,
            dtype=plan.dtype + ("+int8" if plan.cpu_int8 else ""),
            num_parameters=sum(p.numel() for p in model.parameters()),
        )
        self._loop = ContinuousBatcher(model, plan.device, max_batch_size=max_batch_size)
        self._vocab_size = model.get_input_embeddings().num_embeddings
        vocab_size = model.config.get_text_config().vocab_size
        self._vocab = SamplerFactory(lambda: self._grammar_factory(vocab_size))

    def _grammar_factory(self, vocab_size: int):
        from parley.engines.guided import GrammarFactory

        return GrammarFactory.from_hf(self._tokenizer, vocab_size, self._eos_ids)

    @classmethod
    def create(cls, source: ModelSource, options: TransformersOptions) -> TransformersEngine:
        model, tokenizer, plan = load_model_and_tokenizer(source, options)
        engine = cls(model, tokenizer, options.model_name or source.name, plan, options.max_batch_size)
        engine._conv_template = options.conv_template
        return engine

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    def _decode(self, ids) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _decode_all(self, ids) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Normalized mean of the last hidden states over each text's tokens (as FastChat does)."""
        if not texts:
            return EmbeddingResult(embeddings=[], prompt_tokens=0)
        future = self._loop.call(lambda: self._embed_now(texts))
        return await asyncio.wrap_future(future)

    def _embed_now(self, texts: list[str]) -> EmbeddingResult:
        encoded = [self._encode(t, True) for t in texts]
        for ids in encoded:
            if len(ids) > self._context_length:
                raise ContextLengthError(len(ids), self._context_length)
        width = max(len(ids) for ids in encoded)
        input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        try:
            hidden = self._model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        except Exception as exc:  # out of memory on a long input, say: this request's error only
            raise RequestFailedError("the model failed on this embedding input", exc) from None
        summed = (hidden * mask.unsqueeze(-1)).sum(1)
        mean = summed / mask.sum(1, keepdim=True)
        vectors = torch.nn.functional.normalize(mean, p=2, dim=1)
        return EmbeddingResult(embeddings=vectors.cpu().tolist(), prompt_tokens=int(mask.sum()))
