"""--load-8bit on the CPU: int8 Linear layers, real answers, smaller weights."""

from __future__ import annotations

import io

import torch

from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.engine import TransformersEngine
from parley.models.source import resolve_model_source


def serialized_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantized_linears(model) -> dict:
    return {name: m.weight() for name, m in model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}


async def test_int8_model_answers_and_is_smaller(engine):
    int8 = TransformersEngine.create(resolve_model_source(None), TransformersOptions(load_8bit=True))
    try:
        assert int8.model_info.dtype == "float32+int8"
        quantized = quantized_linears(int8.model)
        assert len(quantized) >= 200 and all(w.dtype == torch.qint8 for w in quantized.values())
        prompt = ChatFormatter.for_model(int8.model_info).render([{"role": "user", "content": "What is the capital of France?"}])
        result = await int8.generate(GenerationRequest(prompt=prompt.text, add_special_tokens=False,
                                                       params=SamplingParams(temperature=0, max_new_tokens=30)))
        assert "Paris" in result.text
        assert serialized_bytes(int8.model) < 0.55 * serialized_bytes(engine.model)
    finally:
        await int8.aclose()
