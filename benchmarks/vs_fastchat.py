"""parley against FastChat 0.2.36 on this CPU, side by side in one run: aggregate tokens/s and time to first
token at 1 and 16 requests in flight, and parley with a competing busy process on one core.

    python benchmarks/vs_fastchat.py [--engines llamacpp,transformers] [--rounds 1] [--max-tokens 128]

FastChat is set up by ../shared/tools/fastchat_baseline.sh (its own virtual environment under /tmp/fsbase,
the bundled model converted into a directory FastChat loads, its controller, `model_worker` in bfloat16 and
`openai_api_server`); this script runs its `setup` when that environment is missing, and puts pydantic 1 in
it, without which FastChat's streaming fails. parley runs as
`parley serve --no-web --engine ENGINE`. Every stack gets the same streamed chat requests (each its own story prompt, temperature 0.7,
--max-tokens new tokens); tokens are counted by re-tokenizing each reply with the model's own tokenizer, the
same way for every stack (FastChat's stream carries no usage). The stacks take turns within each round;
the table gives the median over rounds. Prints a table; writes benchmarks/results/vs_fastchat.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import openai
from rich.console import Console
from rich.table import Table
from serve_stack import REPO, cpu_model, start_serve

BASELINE = REPO.parent / "shared" / "tools" / "fastchat_baseline.sh"
FASTCHAT_HOME = Path("/tmp/fsbase")
FASTCHAT_URL = "http://127.0.0.1:38000"
TOPICS = ["a lighthouse keeper and a storm", "a dragon who bakes bread", "a city under the sea", "a lost robot",
          "two rival chess players", "a river that runs uphill", "the last winter", "a clockmaker's apprentice",
          "a bicycle race across a desert", "a library that moves", "a king without a crown", "paper birds",
          "a forest of glass trees", "a ship in a bottle", "the night the stars went out", "a musician and a fox"]


def count_tokens_with(tokenizer_dir: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


async def one(client: openai.AsyncOpenAI, model: str, max_tokens: int, seed: int) -> tuple[float, float, str]:
    started = time.perf_counter()
    first = None
    pieces = []
    prompt = f"Tell me a long story about {TOPICS[seed % len(TOPICS)]}."  # each request its own prompt
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=max_tokens, temperature=0.7, seed=seed, stream=True)
    async for event in stream:
        if event.choices and event.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(event.choices[0].delta.content)
    end = time.perf_counter()
    return (first or end) - started, end - started, "".join(pieces)


async def load(base_url: str, model: str, in_flight: int, requests: int, max_tokens: int, count) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="EMPTY", max_retries=0, timeout=1800)
    queue = list(range(requests))
    results = []

    failed: list[str] = []

    async def loop() -> None:
        while queue:
            try:
                results.append(await one(client, model, max_tokens, queue.pop()))
            except openai.APIError as exc:  # counted, not fatal: a stack that breaks under load says so
                failed.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(in_flight)))
    finally:
        await client.close()
    wall = time.perf_counter() - started
    tokens = sum(count(text) for _, _, text in results)
    return {"tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(r[0] for r in results) if results else None,
            "tokens": tokens, "wall_s": wall, "failed": len(failed), "errors": failed[:3]}


class BusyCore:
    """A competing process that keeps one core busy."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def start_fastchat(console: Console) -> None:
    if not (FASTCHAT_HOME / "fs" / "bin" / "python").exists():
        if not BASELINE.exists():
            raise SystemExit(f"{BASELINE} is missing: FastChat cannot be set up")
        with console.status("setting up FastChat 0.2.36 (once; several minutes)…"):
            subprocess.run(["bash", str(BASELINE), "setup"], check=True, capture_output=True)
    python = str(FASTCHAT_HOME / "fs" / "bin" / "python")
    version = subprocess.run([python, "-c", "import pydantic; print(pydantic.VERSION)"], capture_output=True, text=True)
    if not version.stdout.startswith("1."):
        # FastChat 0.2.36's API server streams with pydantic 1's `.json(ensure_ascii=...)`: under pydantic 2 every
        # streamed reply breaks off after its first event (TypeError: `dumps_kwargs` ... no longer supported)
        with console.status("installing pydantic 1 into FastChat's environment (its streaming needs it)…"):
            subprocess.run([python, "-m", "pip", "install", "-q", "pydantic<2", "fastapi<0.100"], check=True,
                           capture_output=True)
    with console.status("starting FastChat…"):
        subprocess.run(["bash", str(BASELINE), "start"], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", default="llamacpp,transformers",
                        help="parley stacks, comma-separated; each an engine and any further `parley serve` flags, "
                             "e.g. 'llamacpp --n-threads 1'")
    parser.add_argument("--no-fastchat", action="store_true", help="parley's stacks only (no ratios)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests-1", type=int, default=4, help="requests at 1 in flight")
    parser.add_argument("--requests-16", type=int, default=16, help="requests at 16 in flight")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core runs")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "vs_fastchat.json"))
    args = parser.parse_args()
    console = Console()
    engines = [e.split() for e in args.engines.split(",") if e.strip()]
    stacks: dict[str, tuple[str, str]] = {}
    if not args.no_fastchat:
        start_fastchat(console)
        stacks["FastChat 0.2.36"] = (FASTCHAT_URL, "smollm2")
    procs = []
    try:
        for engine, *flags in engines:
            proc, url, model = start_serve(console, "--no-web", "--engine", engine, *flags)
            procs.append(proc)
            stacks[" ".join(["parley,", engine, *flags])] = (url, model)
        count = count_tokens_with(FASTCHAT_HOME / "smol_hf4")
        runs: dict[tuple[str, str], list[dict]] = {}
        cases = [("1", 1, args.requests_1, False), ("16", 16, args.requests_16, False)]
        if not args.no_busy:
            cases += [("1 busy", 1, args.requests_1, True), ("16 busy", 16, args.requests_16, True)]
        for round_ in range(args.rounds):
            for stack, (url, model) in stacks.items():
                asyncio.run(load(url, model, 1, 1, 16, count))  # warm
                for case, in_flight, requests, busy in cases:
                    if busy and stack.startswith("FastChat"):
                        continue
                    with console.status(f"round {round_ + 1}: {stack}, {case} in flight…"):
                        if busy:
                            with BusyCore():
                                result = asyncio.run(load(url, model, in_flight, requests, args.max_tokens, count))
                        else:
                            result = asyncio.run(load(url, model, in_flight, requests, args.max_tokens, count))
                    runs.setdefault((stack, case), []).append(result)
                    ttft = "–" if result["ttft_p50_s"] is None else f"{result['ttft_p50_s'] * 1000:.0f} ms"
                    failures = f", {result['failed']} of {requests} FAILED ({result['errors'][0]})" if result["failed"] else ""
                    console.log(f"{stack}, {case}: {result['tokens_per_s']:.1f} tok/s, TTFT p50 {ttft}{failures}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
        if not args.no_fastchat:
            subprocess.run(["bash", str(BASELINE), "stop"], capture_output=True)

    def med(stack: str, case: str, key: str) -> float | None:
        values = [r[key] for r in runs.get((stack, case), []) if r[key] is not None]
        return statistics.median(values) if values else None

    base = {case: med("FastChat 0.2.36", case, "tokens_per_s") for case in ("1", "16")}
    base_ttft = med("FastChat 0.2.36", "1", "ttft_p50_s")
    table = Table(title=f"aggregate tokens/s, {args.max_tokens} new tokens, temperature 0.7 ({cpu_model()}, "
                        f"{args.rounds} round(s), medians)")
    for column in ("stack", "1 in flight", "TTFT p50 (1)", "16 in flight", "TTFT p50 (16)", "1, busy core",
                   "16, busy core"):
        table.add_column(column, justify="right" if column != "stack" else "left")
    summary = []
    for stack in stacks:
        row = {"stack": stack}
        cells = [stack]
        for case in ("1", "16", "1 busy", "16 busy"):
            tps, ttft = med(stack, case, "tokens_per_s"), med(stack, case, "ttft_p50_s")
            failed = sum(r["failed"] for r in runs.get((stack, case), []))
            row[case] = {"tokens_per_s": tps, "ttft_p50_s": ttft, "failed": failed}
            ref = base.get(case.split()[0])
            ratio = f" ({tps / ref:.1f}×)" if tps is not None and ref and not stack.startswith("FastChat") else ""
            cells.append(("–" if tps is None else f"{tps:.1f}{ratio}") + (f" ({failed} failed)" if failed else ""))
            if case in ("1", "16"):
                ttft_ratio = (f" ({ttft / base_ttft:.2f}×)" if case == "1" and base_ttft and ttft is not None
                              and not stack.startswith("FastChat") else "")
                cells.append("–" if ttft is None else f"{ttft * 1000:.0f} ms{ttft_ratio}")
        table.add_row(*cells)
        summary.append(row)
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "max_tokens": args.max_tokens, "rounds": args.rounds,
                                             "stacks": summary, "runs": {f"{k[0]} | {k[1]}": v for k, v in runs.items()}},
                                            indent=2))


if __name__ == "__main__":
    main()
