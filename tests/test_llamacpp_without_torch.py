"""The llama.cpp engine runs on a host without torch: its sampler and grammar mask are numpy. Shown by
shadowing torch with a package that fails on import, then serving a sampled, a schema-constrained and a
logprobs request on the real bundled model in that process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (make installs it)")

SCRIPT = r"""
import asyncio, json, sys
from parley.engines.base import GenerationRequest, Message, SamplingParams
from parley.engines.engine_options import LlamaCppOptions
from parley.engines.llamacpp import LlamaCppEngine
from parley.models.bundled import bundled_gguf_path

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
          "required": ["city", "population"]}

async def main():
    engine = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(n_ctx=2048))
    ask = [Message(role="user", content="Name a large city and its population.")]
    sampled = [await engine.generate(GenerationRequest(messages=ask, params=SamplingParams(
        temperature=0.8, top_p=0.9, top_k=40, seed=7, max_new_tokens=24))) for _ in range(2)]
    shaped = await engine.generate(GenerationRequest(
        messages=ask, params=SamplingParams(temperature=0.7, seed=3, max_new_tokens=60),
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}))
    scored = await engine.generate(GenerationRequest(
        messages=[Message(role="user", content="What is 2 plus 2?")],
        params=SamplingParams(temperature=0, logprobs=3, max_new_tokens=8)))
    await engine.aclose()
    print(json.dumps({"sampled": [r.text for r in sampled], "shaped": shaped.text,
                      "top": [[t.token for t in lp.top_logprobs] for lp in scored.logprobs or []],
                      "torch_loaded": "torch" in sys.modules}))

asyncio.run(main())
"""


def test_the_llamacpp_engine_samples_constrains_and_scores_without_torch(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed on this host')\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["torch_loaded"]
    assert out["sampled"][0] == out["sampled"][1] and out["sampled"][0].strip()  # one seed, one reply
    answer = json.loads(out["shaped"])
    assert set(answer) == {"city", "population"} and isinstance(answer["population"], int)
    assert out["top"] and all(len(top) == 3 for top in out["top"])
