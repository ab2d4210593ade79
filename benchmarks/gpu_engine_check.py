"""The transformers engine on CUDA: constrained decoding, log-probabilities, throughput.

    python benchmarks/gpu_engine_check.py --tokenizer-dir DIR [--hidden 2048 --layers 16] [--max-tokens 128]

Builds a Llama model with random weights from SmolLM2's tokenizer and the given size (no
download: for speed, not quality), loads it into the transformers engine on the GPU, then
(1) checks that 32 concurrent JSON-schema constrained replies all parse and validate and that
log-probabilities are finite and <= 0 — random weights make this a hard test of the grammar
path, since the model itself knows no JSON — and (2) measures tokens/s at 1, 16 and 64
requests in flight, plain and constrained. Prints a table; writes JSON to --output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from parley.bench.modes import STORY_SCHEMA
from parley.engines.base import GenerationRequest, GuidedDecoding, SamplingParams
from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.engine import TransformersEngine
from parley.models.source import resolve_model_source

CHECK_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


def build_model(tokenizer_dir: Path, hidden: int, layers: int, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                         max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def request(i: int, max_tokens: int, guided: GuidedDecoding | None, logprobs: int | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=f"<|im_start|>user\nTell me about item {i}.<|im_end|>\n<|im_start|>assistant\n",
                             add_special_tokens=False, params=SamplingParams(
                                 temperature=0.8, seed=i, max_new_tokens=max_tokens, ignore_eos=True, guided=guided,
                                 logprobs=logprobs))


async def rate(engine, reqs) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in reqs))
    torch.cuda.synchronize()
    return sum(r.usage.completion_tokens for r in results) / (time.perf_counter() - start)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/gpu_engine_check.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.tokenizer_dir, args.hidden, args.layers, Path(tmp) / "model")
        engine = TransformersEngine.create(resolve_model_source(str(model_dir)),
                                           TransformersOptions(device="cuda", dtype="bfloat16", max_batch_size=64))
    info = engine.model_info
    print(f"{info.num_parameters / 1e6:.0f}M parameters on {info.device} ({info.dtype}), {torch.cuda.get_device_name()}")

    guided = GuidedDecoding(kind="json_schema", json_schema=CHECK_SCHEMA)
    results = await asyncio.gather(*(engine.generate(request(i, 200, guided, logprobs=3)) for i in range(32)))
    valid = 0
    for r in results:
        value = json.loads(r.text)
        assert set(value) == {"name", "age", "tags"} and 0 <= value["age"] <= 120 and len(value["name"]) <= 20
        assert all(math.isfinite(lp.logprob) and lp.logprob <= 0 for lp in r.logprobs)
        valid += 1
    print(f"constrained replies valid: {valid}/32 (finish reasons: "
          f"{sorted({r.finish_reason for r in results})}); example: {results[0].text}")

    story = GuidedDecoding(kind="json_schema", json_schema=STORY_SCHEMA)
    await rate(engine, [request(0, 8, story)])  # warm-up
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for c in (1, 16, 64):
            for name, g in (("plain", None), ("json", story)):
                runs.setdefault(f"{name} c={c}", []).append(await rate(engine, [request(i, args.max_tokens, g) for i in range(c)]))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    table = Table(title=f"transformers engine on {torch.cuda.get_device_name()}, random {info.num_parameters / 1e6:.0f}M "
                        f"Llama, bf16, {args.max_tokens} tokens/request, tokens/s")
    for col in ("in flight", "plain", "json", "json/plain"):
        table.add_column(col, justify="right")
    for c in (1, 16, 64):
        p, j = medians[f"plain c={c}"], medians[f"json c={c}"]
        table.add_row(str(c), f"{p:.0f}", f"{j:.0f}", f"{j / p:.2f}")
    Console(width=120).print(table)
    await engine.aclose()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "parameters": info.num_parameters,
                                       "valid": valid, "runs": runs, "medians": medians}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
