"""The Responses API against chat completions: tokens/s and TTFT of `/v1/responses` and `/v1/chat/completions` on
the same model and server, at concurrency 1 and 16, in one run.

    python benchmarks/responses_vs_chat.py [--rounds 3] [--max-tokens 64] [--concurrency 1,16]

A controller, a worker with the bundled model (llama.cpp) and `parley api` (with its database, so responses are
stored, as OpenAI's default `store` asks); streamed requests, greedy, EOS ignored (every request generates
--max-tokens), the same user message. For each concurrency, --rounds alternate between the two APIs (what
`parley bench --api chat,responses` does once), so drift on a shared machine hits both; the table has the median
of the rounds and the ratio Responses / chat. The issue's target: within 5%.

Then TTFT at the wire: the same number of requests one at a time (--wire-requests each, alternating), timed with
httpx to the first bytes of the first output delta, which leaves out the openai SDK's parsing of events (the
Responses stream's first two events carry the whole response object, which the SDK turns into typed objects
before the first delta).

Prints two tables; writes benchmarks/results/responses_vs_chat.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model

from parley.bench.load import DEFAULT_PROMPT, run_load

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import start_api, start_controller, start_worker  # noqa: E402 - the tests' process helpers

MODEL = "smollm2-135m-instruct"
APIS = ("chat", "responses")


def wire_ttft_ms(http: httpx.Client, url: str, api_name: str, max_tokens: int) -> float:
    """One streamed request: milliseconds to the first bytes of its first output delta."""
    if api_name == "chat":
        body = {"model": MODEL, "messages": [{"role": "user", "content": DEFAULT_PROMPT}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "ignore_eos": True}
        path, marker = "/v1/chat/completions", '"content":"'
    else:
        body = {"model": MODEL, "input": DEFAULT_PROMPT, "max_output_tokens": max_tokens, "temperature": 0,
                "stream": True, "ignore_eos": True}
        path, marker = "/v1/responses", "response.output_text.delta"
    started, first = time.perf_counter(), None
    with http.stream("POST", url + path, json=body) as reply:
        for line in reply.iter_lines():
            if first is None and marker in line and '"content":""' not in line:
                first = time.perf_counter() - started
    return (first or time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--wire-requests", type=int, default=30)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "responses_vs_chat.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console() if sys.stdout.isatty() else Console(width=200)
    db = f"sqlite:///{Path(tempfile.mkdtemp(prefix='parley-bench-')) / 'parley.db'}"
    controller = start_controller()
    worker = start_worker(controller, names=MODEL)
    api = start_api(controller, "--db-url", db)
    runs: dict[tuple[str, int], list] = {(a, c): [] for a in APIS for c in levels}
    try:
        async def measure() -> None:
            await run_load(api.url + "/v1", MODEL, 2, 2, 8, ignore_eos=True)  # warm up
            with Progress(console=Console(stderr=True)) as progress:
                for level in levels:
                    n = max(4, 2 * level)
                    task = progress.add_task(f"concurrency {level}: {args.rounds} rounds each way", total=2 * args.rounds * n)
                    for _ in range(args.rounds):
                        for api_name in APIS:
                            result = await run_load(api.url + "/v1", MODEL, level, n, args.max_tokens, ignore_eos=True,
                                                    api=api_name, on_done=lambda: progress.advance(task))
                            runs[(api_name, level)].append(result)

        asyncio.run(measure())
        wire = {name: [] for name in APIS}
        with httpx.Client(timeout=120) as http:  # one kept-alive connection, as the SDK's
            for _ in range(args.wire_requests):
                for api_name in APIS:
                    wire[api_name].append(wire_ttft_ms(http, api.url, api_name, args.max_tokens))
    finally:
        api.stop()
        worker.stop()
        controller.stop()
    cpu = cpu_model()
    rows = []
    for level in levels:
        chat_tps = statistics.median(r.tokens_per_s for r in runs[("chat", level)])
        for api_name in APIS:
            results = runs[(api_name, level)]
            tps = statistics.median(r.tokens_per_s for r in results)
            rows.append({"api": api_name, "concurrency": level, "tokens_per_s": tps,
                         "rounds_tokens_per_s": [r.tokens_per_s for r in results],
                         "ttft_ms_p50": statistics.median(r.ttft_ms["p50"] for r in results),
                         "ttft_ms_p90": statistics.median(r.ttft_ms["p90"] for r in results),
                         "failed": sum(r.failed for r in results), "vs_chat": tps / chat_tps if chat_tps else None})
    table = Table(title=f"/v1/responses against /v1/chat/completions: {MODEL} on llama.cpp, {args.max_tokens} tokens "
                        f"a request, EOS ignored, median of {args.rounds} rounds ({cpu})")
    for column in ("API", "concurrency", "tokens/s (rounds)", "TTFT p50 ms", "TTFT p90 ms", "failed", "vs chat"):
        table.add_column(column, justify="right" if column != "API" else "left")
    for row in rows:
        table.add_row(row["api"], str(row["concurrency"]),
                      f"{row['tokens_per_s']:.1f} ({', '.join(f'{x:.0f}' for x in row['rounds_tokens_per_s'])})",
                      f"{row['ttft_ms_p50']:.0f}", f"{row['ttft_ms_p90']:.0f}", str(row["failed"]),
                      f"{row['vs_chat']:.3f}")
    console.print(table)
    wire_rows = {name: {"p50": statistics.median(v), "mean": statistics.fmean(v)} for name, v in wire.items()}
    table = Table(title=f"TTFT at the wire, one request at a time, {args.wire_requests} each ({cpu})")
    for column in ("API", "TTFT p50 ms", "TTFT mean ms", "vs chat"):
        table.add_column(column, justify="right" if column != "API" else "left")
    for name, row in wire_rows.items():
        table.add_row(name, f"{row['p50']:.1f}", f"{row['mean']:.1f}", f"{row['p50'] / wire_rows['chat']['p50']:.3f}")
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu, "model": MODEL, "max_tokens": args.max_tokens,
                                             "rounds": args.rounds, "rows": rows, "wire_ttft_ms": wire_rows}, indent=2))
    console.print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
