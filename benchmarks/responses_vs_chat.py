"""The Responses API against chat completions: tokens/s and TTFT of `/v1/responses` and `/v1/chat/completions` on
the same model and server, at concurrency 1 and 16, in one run.

    python benchmarks/responses_vs_chat.py [--rounds 3] [--max-tokens 64] [--concurrency 1,16]

A controller, a worker with the bundled model (llama.cpp) and `parley api` (with its database, so responses are
stored, as OpenAI's default `store` asks); streamed requests, greedy, EOS ignored (every request generates
--max-tokens), the same user message. For each concurrency, --rounds alternate between the two APIs (what
`parley bench --api chat,responses` does once), so drift on a shared machine hits both; the table has the median
of the rounds and the ratio Responses / chat. The issue's target: within 5%.

Prints a table; writes benchmarks/results/responses_vs_chat.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model

from parley.bench.load import run_load

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import start_api, start_controller, start_worker  # noqa: E402 - the tests' process helpers

MODEL = "smollm2-135m-instruct"
APIS = ("chat", "responses")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,16")
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
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu, "model": MODEL, "max_tokens": args.max_tokens,
                                             "rounds": args.rounds, "rows": rows}, indent=2))
    console.print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
