"""`parley bench`: throughput and latency of any OpenAI-compatible server at several concurrencies."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.bench.load import LoadResult


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark an OpenAI-compatible server", description=__doc__)
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--num-requests", type=int, default=None, help="per level (default: 2 x concurrency, at least 4)")
    p.add_argument("--prompt", default=None, help="the user message of every request (default: a request for a long story)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="ask for exactly --max-tokens tokens (parley, vLLM; servers without it reject the field)")
    p.add_argument("--response-format", choices=["json"], default=None,
                   help="also run with JSON-schema constrained output and report its throughput against plain")
    p.add_argument("--tools", action="store_true",
                   help="also run with a forced tool call (constrained arguments) and report it against plain")
    p.add_argument("--api", default="chat",
                   help="the API to load, chat (/v1/chat/completions) or responses (/v1/responses), or both, "
                        "comma-separated (alternating, and each reported against the first)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.set_defaults(run=run)


def results_table(results: list[LoadResult], title: str) -> Table:
    table = Table(title=title)
    first_api = results[0].api if results else "chat"
    base = {r.concurrency: r.tokens_per_s for r in results if r.mode == "plain" and r.api == first_api}
    apis = len({r.api for r in results}) > 1
    modes = len({r.mode for r in results}) > 1
    if apis:
        table.add_column("api")
    if modes:
        table.add_column("mode")
    for col in ("concurrency", "requests", "failed", "tokens/s", "req/s", "TTFT p50 ms", "TTFT p90 ms",
                "ITL p50 ms", "ITL p90 ms", "ITL p99 ms", "latency p50 s"):
        table.add_column(col, justify="right")
    if apis or modes:
        table.add_column(f"vs {first_api} plain" if apis else "vs plain", justify="right")
    for r in results:
        lead = ([r.api] if apis else []) + ([r.mode] if modes else [])
        tail = ([f"{r.tokens_per_s / base[r.concurrency]:.2f}" if base.get(r.concurrency) else "-"]
                if apis or modes else [])
        table.add_row(*lead, str(r.concurrency), str(r.requests), str(r.failed), f"{r.tokens_per_s:.1f}",
                      f"{r.requests_per_s:.2f}", f"{r.ttft_ms['p50']:.0f}", f"{r.ttft_ms['p90']:.0f}",
                      f"{r.itl_ms['p50']:.1f}", f"{r.itl_ms['p90']:.1f}", f"{r.itl_ms['p99']:.1f}",
                      f"{r.latency_s['p50']:.2f}", *tail)
    return table


def run(args: argparse.Namespace) -> int:
    from parley.bench.load import DEFAULT_PROMPT, run_load

    args.prompt = args.prompt or DEFAULT_PROMPT
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        raise ParleyError(f"--concurrency must be comma-separated integers, not {args.concurrency!r}") from None
    if not levels or min(levels) < 1:
        raise ParleyError("--concurrency needs at least one level >= 1")
    from parley.bench.load import APIS

    apis = [a.strip() for a in args.api.split(",") if a.strip()]
    if not apis or any(a not in APIS for a in apis):
        raise ParleyError(f"--api must be {' or '.join(APIS)} (or both, comma-separated), not {args.api!r}")
    modes = ["plain"] + (["json"] if args.response_format == "json" else []) + (["tools"] if args.tools else [])
    results = []
    with Progress(console=Console(stderr=True)) as progress:
        for level in levels:
            for mode in modes:  # alternating APIs and modes per level, so drift on a shared machine hits each
                for api in apis:
                    n = args.num_requests or max(4, 2 * level)
                    task = progress.add_task(f"{api}, {mode}, concurrency {level}", total=n)
                    result = asyncio.run(run_load(args.base_url, args.model, level, n, args.max_tokens, args.api_key,
                                                  args.prompt, args.ignore_eos,
                                                  on_done=lambda t=task: progress.advance(t), mode=mode, api=api))
                    if result.requests == 0:
                        raise ParleyError(f"every {api} {mode} request failed at concurrency {level}; "
                                          f"is {args.base_url} serving {args.model}?")
                    results.append(result)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(results_table(results, f"{args.model} at {args.base_url}, {args.max_tokens} tokens per request"))
    if args.output:
        Path(args.output).write_text(json.dumps([r.model_dump() for r in results], indent=2))
    return 0
