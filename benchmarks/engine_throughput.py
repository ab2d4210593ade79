"""Aggregate tokens/s of the transformers engine: 16 concurrent requests vs one at a time.

    python benchmarks/engine_throughput.py [--model-path P] [--concurrency 16] [--max-tokens 128] [--rounds 3]

Every request generates exactly --max-tokens tokens (EOS ignored), greedy. Single-stream and
concurrent runs alternate for --rounds rounds in one process, and the medians are compared,
so that a noisy shared machine affects both sides alike. Prints a table; writes JSON to
benchmarks/results/engine_throughput.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.engine import TransformersEngine
from parley.models.source import resolve_model_source

TOPICS = ["cats", "the sea", "a king", "robots", "bread", "a river", "stars", "winter",
          "a bicycle", "music", "a city", "trees", "rain", "a dragon", "paper", "clocks"]


def requests_for(formatter: ChatFormatter, n: int, max_tokens: int) -> list[GenerationRequest]:
    out = []
    for i in range(n):
        prompt = formatter.render([{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]}."}])
        out.append(GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens,
                                     params=SamplingParams(temperature=0, max_new_tokens=max_tokens, ignore_eos=True)))
    return out


async def timed(engine, reqs) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return sum(r.usage.completion_tokens for r in results), time.perf_counter() - start


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default="benchmarks/results/engine_throughput.json")
    args = ap.parse_args()

    engine = TransformersEngine.create(resolve_model_source(args.model_path), TransformersOptions(max_batch_size=args.concurrency))
    formatter = ChatFormatter.for_model(engine.model_info)
    reqs = requests_for(formatter, args.concurrency, args.max_tokens)
    await engine.generate(requests_for(formatter, 1, 8)[0])  # warm-up

    single, batched = [], []
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=2 * args.rounds)
        for _ in range(args.rounds):
            tokens, seconds = await timed(engine, reqs[:1])
            single.append(tokens / seconds)
            progress.advance(task)
            tokens, seconds = await timed(engine, reqs)
            batched.append(tokens / seconds)
            progress.advance(task)
    stats = engine.stats()
    await engine.aclose()

    s, b = statistics.median(single), statistics.median(batched)
    report = {
        "model": engine.model_info.name, "device": engine.model_info.device, "dtype": engine.model_info.dtype,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "concurrency": args.concurrency, "max_tokens": args.max_tokens, "rounds": args.rounds,
        "single_tokens_per_s": single, "concurrent_tokens_per_s": batched,
        "single_median": s, "concurrent_median": b, "speedup": b / s,
        "engine_stats": stats.model_dump() | {"mean_batch_size": stats.mean_batch_size},
    }
    table = Table(title=f"transformers engine, {report['model']} on {report['device']} ({report['dtype']}), {args.max_tokens} new tokens/request")
    for col in ("requests in flight", "tokens/s (median)", "runs", "vs single"):
        table.add_column(col, justify="right")
    table.add_row("1", f"{s:.1f}", " ".join(f"{x:.1f}" for x in single), "1.00x")
    table.add_row(str(args.concurrency), f"{b:.1f}", " ".join(f"{x:.1f}" for x in batched), f"{b / s:.2f}x")
    Console().print(table)
    Console().print(f"mean decode batch {stats.mean_batch_size:.1f}, max {stats.max_batch_size_seen}, "
                    f"{stats.joined_running_batch} requests joined a running batch")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
