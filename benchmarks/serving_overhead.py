"""Full-stack serving vs the engine called directly, in one run.

    python benchmarks/serving_overhead.py [--max-tokens 128] [--requests 4] [--rounds 2] [--concurrent 16]

Starts `parley serve` (controller, worker, API as separate processes) on free ports with the
bundled model, and loads the same model into this process. Then, alternating for --rounds:
the engine directly at concurrency 1, and the stack through the OpenAI API at concurrency 1
(the `parley bench` load generator, streaming, EOS ignored, greedy). Finally the stack at
concurrency --concurrent. Medians of the rounds are compared. Prints a table; writes
benchmarks/results/serving_overhead.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from serve_stack import start_serve

from parley.bench.load import DEFAULT_PROMPT, run_load
from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.engine import TransformersEngine
from parley.models.source import resolve_model_source

REPO = Path(__file__).resolve().parents[1]




async def engine_direct(engine, formatter, max_tokens: int, n: int) -> dict:
    """Sequential requests straight into the engine: tokens/s and time to the first text."""
    prompt = formatter.render([{"role": "user", "content": DEFAULT_PROMPT}])
    tokens, ttfts = 0, []
    started = time.perf_counter()
    for _ in range(n):
        request = GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens,
                                    params=SamplingParams(temperature=0, max_new_tokens=max_tokens, ignore_eos=True))
        t0 = time.perf_counter()
        first = None
        async for chunk in engine.generate_stream(request):
            if chunk.text and first is None:
                first = time.perf_counter() - t0
            if chunk.usage:
                tokens += chunk.usage.completion_tokens
        ttfts.append(first)
    wall = time.perf_counter() - started
    return {"tokens_per_s": tokens / wall, "ttft_ms": statistics.median(ttfts) * 1000}




async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=4, help="sequential requests per single-stream measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--output", default="benchmarks/results/serving_overhead.json")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 110))

    proc, root, model = start_serve(console)
    base_url = root + "/v1"
    try:
        with console.status("loading the engine in this process…"):
            engine = TransformersEngine.create(resolve_model_source(None), TransformersOptions())
            formatter = ChatFormatter.for_model(engine.model_info)
        await engine_direct(engine, formatter, 8, 1)  # warm-up, both sides
        await run_load(base_url, model, 1, 1, 8, ignore_eos=True)
        direct, stack = [], []
        for r in range(args.rounds):
            with console.status(f"round {r + 1}/{args.rounds}: engine directly"):
                direct.append(await engine_direct(engine, formatter, args.max_tokens, args.requests))
            with console.status(f"round {r + 1}/{args.rounds}: full stack, concurrency 1"):
                res = await run_load(base_url, model, 1, args.requests, args.max_tokens, ignore_eos=True)
                stack.append({"tokens_per_s": res.tokens_per_s, "ttft_ms": res.ttft_ms["p50"], "itl_ms": res.itl_ms})
        await engine.aclose()
        with console.status(f"full stack, concurrency {args.concurrent}"):
            wide = await run_load(base_url, model, args.concurrent, 2 * args.concurrent, args.max_tokens, ignore_eos=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    d_tps = statistics.median(x["tokens_per_s"] for x in direct)
    s_tps = statistics.median(x["tokens_per_s"] for x in stack)
    d_ttft = statistics.median(x["ttft_ms"] for x in direct)
    s_ttft = statistics.median(x["ttft_ms"] for x in stack)
    table = Table(title=f"{model}, {args.max_tokens} tokens per request, greedy, EOS ignored ({platform.processor() or platform.machine()})")
    for col in ("path", "concurrency", "tokens/s", "TTFT p50 ms", "vs engine", "vs stack c=1"):
        table.add_column(col, justify="right")
    table.add_row("engine directly", "1", f"{d_tps:.1f}", f"{d_ttft:.0f}", "1.00x", "")
    table.add_row("API+controller+worker", "1", f"{s_tps:.1f}", f"{s_ttft:.0f}", f"{s_tps / d_tps:.3f}x", "1.00x")
    table.add_row("API+controller+worker", str(args.concurrent), f"{wide.tokens_per_s:.1f}", f"{wide.ttft_ms['p50']:.0f}",
                  "", f"{wide.tokens_per_s / s_tps:.2f}x")
    console.print(table)
    summary = {
        "gateway_tokens_per_s_loss_pct": 100 * (1 - s_tps / d_tps),
        "gateway_added_ttft_ms": s_ttft - d_ttft,
        "concurrency_speedup": wide.tokens_per_s / s_tps,
    }
    console.print(f"gateway overhead: {summary['gateway_tokens_per_s_loss_pct']:.1f}% of tokens/s (target <= 10%), "
                  f"{summary['gateway_added_ttft_ms']:+.1f} ms TTFT (target <= 5 ms); "
                  f"concurrency {args.concurrent} / 1: {summary['concurrency_speedup']:.2f}x (target >= 4x)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "args": vars(args), "direct": direct, "stack": stack,
                               "concurrent": wide.model_dump(), "summary": summary}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
