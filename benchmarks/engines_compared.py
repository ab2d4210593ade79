"""llama.cpp against transformers on the bundled model, plain and JSON-constrained, in one run.

    python benchmarks/engines_compared.py [--concurrency 16] [--max-tokens 64] [--rounds 2]

Both engines are loaded in this process (and llama.cpp a second time with one sequence at a
time, as a plain request queue would serve it). For each round, alternating engines: one
request alone and --concurrency requests at once, each generating exactly --max-tokens tokens
(greedy, EOS ignored), unconstrained and then under a JSON schema (a story inside an object,
the constraint `parley bench --response-format json` uses). Medians over the rounds are
compared. Prints a table; writes benchmarks/results/engines_compared.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from parley.bench.modes import STORY_SCHEMA
from parley.conversation.formatter import ChatFormatter
from parley.engines.base import (
    GenerationRequest,
    GuidedDecoding,
    SamplingParams,
)
from parley.engines.engine_options import LlamaCppOptions, TransformersOptions
from parley.engines.hf.engine import TransformersEngine
from parley.engines.llamacpp import LlamaCppEngine
from parley.models.source import resolve_model_source

TOPICS = ["cats", "the sea", "a king", "robots", "bread", "a river", "stars", "winter",
          "a bicycle", "music", "a city", "trees", "rain", "a dragon", "paper", "clocks"]


def requests_for(formatter: ChatFormatter, n: int, max_tokens: int, constrained: bool) -> list[GenerationRequest]:
    guided = GuidedDecoding(kind="json_schema", json_schema=STORY_SCHEMA) if constrained else None
    out = []
    for i in range(n):
        prompt = formatter.render([{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]}."}])
        out.append(GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens, params=SamplingParams(
            temperature=0, max_new_tokens=max_tokens, ignore_eos=True, guided=guided)))
    return out


async def tokens_per_s(engine, reqs) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return sum(r.usage.completion_tokens for r in results) / (time.perf_counter() - start)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output", default="benchmarks/results/engines_compared.json")
    args = ap.parse_args()

    source = resolve_model_source(None)
    engines = {
        "transformers": TransformersEngine.create(source, TransformersOptions(max_batch_size=args.concurrency)),
        "llamacpp": LlamaCppEngine.create(source, LlamaCppOptions(max_batch_size=args.concurrency)),
        "llamacpp, one at a time": LlamaCppEngine.create(source, LlamaCppOptions(max_batch_size=1)),
    }
    cases = [(c, constrained) for constrained in (False, True) for c in (1, args.concurrency)]
    results: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    with Progress() as progress:
        task = progress.add_task("measuring", total=args.rounds * len(engines) * len(cases))
        for engine in engines.values():  # warm-up, grammar tables included
            fmt = ChatFormatter.for_model(engine.model_info)
            await tokens_per_s(engine, requests_for(fmt, 1, 4, True))
        for _ in range(args.rounds):
            for name, engine in engines.items():
                fmt = ChatFormatter.for_model(engine.model_info)
                for c, constrained in cases:
                    key = f"{'json' if constrained else 'plain'} c={c}"
                    rate = await tokens_per_s(engine, requests_for(fmt, c, args.max_tokens, constrained))
                    results[name].setdefault(key, []).append(rate)
                    progress.advance(task)
    for engine in engines.values():
        await engine.aclose()

    medians = {name: {k: statistics.median(v) for k, v in runs.items()} for name, runs in results.items()}
    c = args.concurrency
    table = Table(title=f"bundled SmolLM2-135M on this CPU, {args.max_tokens} tokens/request, tokens/s (median of {args.rounds})")
    for col in ("engine", "plain c=1", f"plain c={c}", f"c={c} vs c=1", "json c=1", f"json c={c}",
                "json/plain c=1", f"json/plain c={c}"):
        table.add_column(col, justify="right" if col != "engine" else "left")
    for name, m in medians.items():
        table.add_row(name, f"{m['plain c=1']:.1f}", f"{m[f'plain c={c}']:.1f}", f"{m[f'plain c={c}'] / m['plain c=1']:.2f}x",
                      f"{m['json c=1']:.1f}", f"{m[f'json c={c}']:.1f}", f"{m['json c=1'] / m['plain c=1']:.2f}",
                      f"{m[f'json c={c}'] / m[f'plain c={c}']:.2f}")
    Console(width=max(Console().width, 140)).print(table)
    t, ll = medians["transformers"], medians["llamacpp"]
    print(f"llamacpp vs transformers: {ll['plain c=1'] / t['plain c=1']:.1f}x single-stream, "
          f"{ll[f'plain c={c}'] / t[f'plain c={c}']:.1f}x at {c} streams")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": platform.processor() or platform.machine(), "max_tokens": args.max_tokens,
                                             "concurrency": c, "runs": results, "medians": medians}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
