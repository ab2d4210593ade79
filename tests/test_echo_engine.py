"""The deterministic echo engine that tests of the upper layers will use."""

from __future__ import annotations

from parley.engines.base import EngineOptions, GenerationRequest, SamplingParams
from parley.engines.echo import EchoEngine
from parley.engines.registry import EngineRegistry
from parley.models.source import ModelSource, SourceKind


async def test_echoes_with_limits_stops_and_usage():
    e = EchoEngine()
    full = await e.generate(GenerationRequest(prompt="one two three four"))
    assert (full.text, full.finish_reason, full.usage.completion_tokens) == ("one two three four", "stop", 4)
    short = await e.generate(GenerationRequest(prompt="one two three four", params=SamplingParams(max_new_tokens=2)))
    assert (short.text, short.finish_reason) == ("one two ", "length")
    cut = await e.generate(GenerationRequest(prompt="one two three four", params=SamplingParams(stop=["thr"])))
    assert (cut.text, cut.finish_reason) == ("one two ", "stop")
    chunks = [c async for c in e.generate_stream(GenerationRequest(prompt="a b c"))]
    assert [c.text for c in chunks] == ["a ", "b ", "c"]


async def test_embeddings_are_deterministic_unit_vectors():
    e = EchoEngine()
    a, b = (await e.embed(["x", "x"])).embeddings
    assert a == b and abs(sum(v * v for v in a) - 1) < 1e-9


def test_builtin_engines_register_through_entry_points_like_plugins():
    registry = EngineRegistry.from_entry_points()
    assert {"transformers", "echo"} <= set(registry.names())
    engine = registry.create("echo", ModelSource(SourceKind.HUB, "x/y", "y"), EngineOptions(model_name="named"))
    assert engine.model_info.name == "named"
    registry.register("mine", EchoEngine)
    assert registry.get("mine") is EchoEngine
