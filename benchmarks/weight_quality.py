"""How close each weight format of the bundled model stays to the float model, and how fast it decodes.

    python benchmarks/weight_quality.py [--tokens 32]

The reference is the transformers engine in float32 (the GGUF's own weights, dequantized). Each
llama.cpp variant answers the same fixed questions greedily; the table shows how many answers are
token for token the reference's, the mean length of the agreeing prefix, batch-1 decode speed, and
the answer to "What is the capital of France?". Variants: the file as it is (Q4_1), requantized to
Q8_0, and dequantized to F16 (what `--weights auto` serves for a small quantized model). Prints a
table; writes benchmarks/results/weight_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model

from parley.engines.base import GenerationRequest, Message, SamplingParams

QUESTIONS = [
    "What is the capital of France?", "What is 2 plus 2?", "Name three primary colors.",
    "Who wrote Romeo and Juliet?", "What is the boiling point of water in Celsius?",
    "Translate 'thank you' into Spanish.", "What is the largest planet in our solar system?",
    "Give me a synonym for happy.", "How many days are in a week?", "What gas do plants absorb from the air?",
    "Write a haiku about the sea.", "What is the square root of 81?",
]


async def answers(engine, tokens: int) -> list[tuple[str, list[int]]]:
    out = []
    for question in QUESTIONS:
        reply = await engine.generate(GenerationRequest(messages=[Message(role="user", content=question)],
                                                        params=SamplingParams(temperature=0, max_new_tokens=tokens)))
        out.append((reply.text, reply.token_ids))
    return out


async def decode_speed(engine, tokens: int = 128) -> float:
    request = GenerationRequest(messages=[Message(role="user", content="Write a long story about a dragon.")],
                                params=SamplingParams(temperature=0, max_new_tokens=tokens, ignore_eos=True))
    await engine.generate(request)  # warm
    started = time.perf_counter()
    await engine.generate(request)
    return tokens / (time.perf_counter() - started)


def agreement(got: list[tuple[str, list[int]]], ref: list[tuple[str, list[int]]]) -> tuple[int, float]:
    same = sum(g[1] == r[1] for g, r in zip(got, ref))
    prefix = [next((i for i, (a, b) in enumerate(zip(g[1], r[1])) if a != b), min(len(g[1]), len(r[1])))
              for g, r in zip(got, ref)]
    return same, sum(prefix) / len(prefix)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "weight_quality.json"))
    args = parser.parse_args()
    console = Console()
    import llama_cpp

    from parley.engines.engine_options import LlamaCppOptions, TransformersOptions
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.engines.registry import EngineRegistry
    from parley.models.bundled import bundled_gguf_path
    from parley.models.source import resolve_model_source

    rows = []
    with console.status("transformers, float32 (the reference)…"):
        engine = EngineRegistry.from_entry_points().create("transformers", resolve_model_source(None),
                                                           TransformersOptions())
        ref = await answers(engine, args.tokens)
        rows.append({"variant": "transformers float32", "identical": len(ref), "prefix": float(args.tokens),
                     "tokens_per_s": await decode_speed(engine), "france": ref[0][0]})
        await engine.aclose()
    gguf = str(bundled_gguf_path())
    with tempfile.TemporaryDirectory() as tmp:
        q8 = str(Path(tmp) / "q8_0.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, True
        assert llama_cpp.llama_model_quantize(gguf.encode(), q8.encode(), params) == 0
        for name, path, weights in [("llama.cpp, the file (Q4_1)", gguf, "file"),
                                    ("llama.cpp, requantized Q8_0", q8, "file"),
                                    ("llama.cpp, F16 (--weights auto)", gguf, "auto")]:
            with console.status(f"{name}…"):
                engine = LlamaCppEngine(path, "smollm2", LlamaCppOptions(weights=weights))
                got = await answers(engine, args.tokens)
                same, prefix = agreement(got, ref)
                rows.append({"variant": name, "identical": same, "prefix": prefix,
                             "tokens_per_s": await decode_speed(engine), "france": got[0][0]})
                await engine.aclose()
    table = Table(title=f"weight formats of the bundled model, {len(QUESTIONS)} questions × {args.tokens} greedy "
                        f"tokens ({cpu_model()})")
    for column in ("variant", "answers identical to float32", "mean agreeing prefix", "batch-1 tok/s", "capital of France"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["variant"], f"{row['identical']}/{len(QUESTIONS)}", f"{row['prefix']:.1f}/{args.tokens}",
                      f"{row['tokens_per_s']:.1f}", row["france"][:50])
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "tokens": args.tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
