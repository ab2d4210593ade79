"""Prefix reuse in the llama.cpp engine: time to first token of a conversation's later turns, with and without
the prefix cache, in one run.

    python benchmarks/prefix_reuse.py [--turns 5] [--conversations 3] [--reply-tokens 120]

Two engines on the bundled model, one with the prefix cache (the default, `--prefix-cache-entries 16`) and
one without (`0`). Each plays the same conversations (a system prompt, then --turns questions, each reply
--reply-tokens greedy tokens, EOS ignored); the time from sending a turn to its first token is measured at
every turn. The engines alternate conversation by conversation. Prints a table; writes
benchmarks/results/prefix_reuse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model

from parley.engines.base import GenerationRequest, Message, SamplingParams

SYSTEM = ("You are an air-quality modelling expert. You explain dispersion models, emission inventories and "
          "monitoring networks to engineers, precisely and with the standard terms of the field.")
QUESTIONS = ["What does a Gaussian plume model assume?", "When does it fail?", "What do people use instead?",
             "How is such a model validated against measurements?", "Which inputs matter most?",
             "How long does a city-scale run take?", "Summarize all of this in three sentences."]


async def conversation(engine, turns: int, reply_tokens: int, topic: int) -> list[float]:
    messages = [Message(role="system", content=SYSTEM)]
    ttfts = []
    for question in QUESTIONS[:turns]:
        messages.append(Message(role="user", content=f"(Case {topic}.) {question}"))
        request = GenerationRequest(messages=messages, params=SamplingParams(
            temperature=0, max_new_tokens=reply_tokens, ignore_eos=True))
        started = time.perf_counter()
        first, text = None, []
        async for chunk in engine.generate_stream(request):
            if first is None and chunk.token_ids:
                first = time.perf_counter() - started
            text.append(chunk.text)
        ttfts.append(first or 0.0)
        messages.append(Message(role="assistant", content="".join(text)))
    return ttfts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=120)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "prefix_reuse.json"))
    args = parser.parse_args()
    console = Console()
    from parley.engines.engine_options import LlamaCppOptions
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    engines = {name: LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(prefix_cache_entries=n))
               for name, n in (("with reuse", 16), ("without", 0))}
    ttfts: dict[str, list[list[float]]] = {name: [] for name in engines}
    try:
        for c in range(args.conversations):
            for name, engine in engines.items():
                with console.status(f"conversation {c + 1}, {name}…"):
                    ttfts[name].append(await conversation(engine, args.turns, args.reply_tokens, c))
        reused = engines["with reuse"].stats().cached_prompt_tokens
    finally:
        for engine in engines.values():
            await engine.aclose()
    per_turn = {name: [statistics.median(run[t] for run in runs) for t in range(args.turns)]
                for name, runs in ttfts.items()}
    table = Table(title=f"time to first token by turn, ms (median of {args.conversations} conversations, "
                        f"{args.reply_tokens}-token replies; {cpu_model()})")
    table.add_column("turn", justify="right")
    for name in engines:
        table.add_column(name, justify="right")
    table.add_column("speed-up", justify="right")
    for t in range(args.turns):
        w, wo = per_turn["with reuse"][t], per_turn["without"][t]
        table.add_row(str(t + 1), f"{w * 1000:.0f}", f"{wo * 1000:.0f}", f"{wo / w:.1f}×" if w else "–")
    console.print(table)
    console.print(f"prompt tokens reused: {reused}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "args": vars(args), "ttft_s": per_turn,
                                             "runs": ttfts, "reused_prompt_tokens": reused}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
