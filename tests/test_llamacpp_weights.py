"""The llama.cpp engine serves a small quantized model in F16 by default, so its answers are the float model's:
greedy replies token for token the transformers engine's (float32, the same weights). The bundled file itself
(Q4_1) answers "L'Étoile, la Marseillaise…" to the first question here (benchmarks/weight_quality.py)."""

from __future__ import annotations

import importlib.util

import pytest

from parley.engines.base import GenerationRequest, Message, SamplingParams
from parley.engines.engine_options import LlamaCppOptions, TransformersOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (make installs it)")

QUESTIONS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "Name three primary colors.",
             "What is the largest planet in our solar system?", "How many days are in a week?",
             "What gas do plants absorb from the air?"]


async def greedy(engine) -> list[list[int]]:
    replies = [await engine.generate(GenerationRequest(messages=[Message(role="user", content=q)],
                                                       params=SamplingParams(temperature=0, max_new_tokens=24)))
               for q in QUESTIONS]
    return [r.token_ids for r in replies], replies[0].text


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
async def test_the_default_weights_answer_as_the_float_model_does(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_CACHE_DIR", str(tmp_path))  # the F16 copy is made here, once
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.engines.registry import EngineRegistry
    from parley.models.bundled import bundled_gguf_path
    from parley.models.source import resolve_model_source

    reference = EngineRegistry.from_entry_points().create("transformers", resolve_model_source(None),
                                                          TransformersOptions())
    try:
        expected, _ = await greedy(reference)
    finally:
        await reference.aclose()
    engine = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions())
    try:
        assert engine.model_info.dtype == "1"  # general.file_type 1: F16
        got, france = await greedy(engine)
    finally:
        await engine.aclose()
    assert "Paris" in france
    identical = sum(a == b for a, b in zip(got, expected))
    assert identical >= len(QUESTIONS) - 1, f"{identical} of {len(QUESTIONS)} greedy replies are the float model's"
    assert len(list(tmp_path.rglob("*-f16-*.gguf"))) == 1
    again = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions())  # from the cache
    await again.aclose()
    assert len(list(tmp_path.rglob("*.gguf"))) == 1


async def test_weights_file_serves_the_file_as_it_is():
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    engine = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(weights="file"))
    try:
        assert engine.model_info.dtype == "3"  # Q4_1, as bundled
    finally:
        await engine.aclose()
