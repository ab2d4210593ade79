"""parley on Ray Serve against the plain controller/worker stack: the same model, engine and threads on the same
machine, in one run.

    python benchmarks/ray_vs_plain.py [--rounds 3] [--max-tokens 64] [--concurrency 1,16] [--threads 2]

Plain: `parley controller`, one `parley worker` (the bundled model on llama.cpp) and `parley api`. Ray: a one-node
Ray cluster (`ray start --head`, its own ports) with `parley ray deploy`: one replica of the same model, the API in
the ingress (no web UI), reached through Serve's HTTP proxy. Ray-api: the same replica through `parley api
--ray-address`, an API process of its own that reaches it through the deployment handle (no proxy hop). Both APIs keep their database (usage is recorded, as by default). Both stacks run side by
side; for each concurrency the rounds alternate between them, so drift on a shared machine hits both. Streamed,
greedy, EOS ignored (every request generates --max-tokens).

Reported: tokens/s (median of the rounds), TTFT p50/p99 through the openai SDK, TTFT at the wire (httpx, one
request at a time, alternating), and the memory (RSS) of the process that holds the model: the worker, or the
Ray replica; and of each whole stack. (The Ray cluster's API takes the tests' static key; the plain API, without
keys, takes any.) Prints tables; writes benchmarks/results/ray_vs_plain.json (or --output).
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
import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model

from parley.bench.load import DEFAULT_PROMPT, run_load

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import Server, start_api, start_controller, start_worker  # noqa: E402 - the tests' process helpers
from tests.test_ray_serve import KEY, RayCluster  # noqa: E402 - the tests' Ray cluster of its own

MODEL = "smollm2-135m-instruct"
STACKS = ("plain", "ray", "ray-api")


def wire_ttft_ms(http: httpx.Client, url: str, max_tokens: int) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": DEFAULT_PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    started, first, seen = time.perf_counter(), None, []
    with http.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            seen.append(line)
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no content from {url} ({reply.status_code}): {' '.join(seen)[:600]}")
    return (first - started) * 1000


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def tree(pid: int) -> list[int]:
    try:
        process = psutil.Process(pid)
        return [pid, *(c.pid for c in process.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--threads", type=int, default=2,
                        help="llama.cpp threads in both, and the replica's num_cpus (default %(default)s; 0: none "
                             "given, each tunes its count while it serves, the replica up to 2)")
    parser.add_argument("--wire-requests", type=int, default=20)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "ray_vs_plain.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console() if sys.stdout.isatty() else Console(width=200)
    tmp = Path(tempfile.mkdtemp(prefix="parley-ray-bench-"))
    status = Console(stderr=True)

    runs: dict[tuple[str, int], list] = {(s, c): [] for s in STACKS for c in levels}
    wire: dict[str, list[float]] = {s: [] for s in STACKS}
    started: list = []  # what to stop, however this ends
    try:
        status.print("starting the plain stack (controller, worker, API)…")
        controller = start_controller()
        started.append(controller)
        threads = ["--n-threads", str(args.threads)] if args.threads else []
        worker = start_worker(controller, "--engine", "llamacpp", *threads, names=MODEL)
        started.append(worker)
        api = start_api(controller, "--db-url", f"sqlite:///{tmp / 'plain.db'}")
        started.append(api)
        status.print("starting a Ray cluster and deploying the same model with `parley ray deploy`…")
        (tmp / "ray").mkdir()
        cluster = RayCluster(tmp / "ray")
        started.append(cluster)
        urls = {"plain": api.url, "ray": cluster.url}  # and "ray-api", once the cluster runs
        config = {"http_options": {"host": "127.0.0.1", "port": cluster.serve_port},
                  "models": [{"worker": {"engine": "llamacpp", "model-names": MODEL, "n-threads": args.threads},
                              "ray_actor_options": {"num_cpus": args.threads or 2}}],
                  "api": {"db-url": f"sqlite:///{tmp / 'ray.db'}"}, "web": None}
        deployed = cluster.deploy(config)
        if deployed.returncode != 0:
            raise SystemExit(deployed.stdout + deployed.stderr)
        replica_pid = next(iter(cluster.replicas()))
        driver = Server("api", "--ray-address", cluster.gcs, "--db-url", f"sqlite:///{tmp / 'ray-api.db'}",
                        env={"PARLEY_DATA_DIR": str(tmp / "data")})
        started.append(driver)
        driver.wait_until(lambda: MODEL in httpx.get(driver.url + "/health", timeout=2).json()["models"],
                          "the API joining the Ray cluster")
        urls["ray-api"] = driver.url

        async def measure() -> None:
            for stack in STACKS:
                await run_load(urls[stack] + "/v1", MODEL, 2, 4, 8, api_key=KEY, ignore_eos=True)  # warm up
            with Progress(console=status) as progress:
                for level in levels:
                    n = max(4, 2 * level)
                    task = progress.add_task(f"concurrency {level}: {args.rounds} rounds each", total=2 * args.rounds * n)
                    for _ in range(args.rounds):
                        for stack in STACKS:
                            runs[(stack, level)].append(await run_load(
                                urls[stack] + "/v1", MODEL, level, n, args.max_tokens, api_key=KEY, ignore_eos=True,
                                on_done=lambda: progress.advance(task)))

        asyncio.run(measure())
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as http:
            for _ in range(args.wire_requests):
                for stack in STACKS:
                    wire[stack].append(wire_ttft_ms(http, urls[stack], args.max_tokens))
        memory = {
            "plain": {"model_process_mb": rss_mb([worker.proc.pid]),
                      "stack_mb": rss_mb([p for s in (controller, worker, api) for p in tree(s.proc.pid)])},
            "ray": {"model_process_mb": rss_mb([replica_pid]), "stack_mb": rss_mb(tree(cluster.proc.pid))},
        }
    finally:
        for process in reversed(started):
            process.stop()

    cpu = cpu_model()
    rows = []
    for level in levels:
        plain_tps = statistics.median(r.tokens_per_s for r in runs[("plain", level)])
        plain_ttft = statistics.median(r.ttft_ms["p50"] for r in runs[("plain", level)])
        for stack in STACKS:
            results = runs[(stack, level)]
            tps = statistics.median(r.tokens_per_s for r in results)
            ttft50 = statistics.median(r.ttft_ms["p50"] for r in results)
            rows.append({"stack": stack, "concurrency": level, "tokens_per_s": tps,
                         "rounds_tokens_per_s": [r.tokens_per_s for r in results],
                         "ttft_ms_p50": ttft50, "ttft_ms_p99": statistics.median(r.ttft_ms["p99"] for r in results),
                         "failed": sum(r.failed for r in results), "tokens_per_s_vs_plain": tps / plain_tps,
                         "ttft_p50_minus_plain_ms": ttft50 - plain_ttft})
    table = Table(title=f"Ray Serve against the plain stack: {MODEL} on llama.cpp ({args.threads or 'tuned'} threads), "
                        f"{args.max_tokens} tokens a request, EOS ignored, median of {args.rounds} rounds ({cpu})")
    for column in ("stack", "concurrency", "tokens/s (rounds)", "vs plain", "TTFT p50 ms", "TTFT p99 ms",
                   "TTFT p50 − plain", "failed"):
        table.add_column(column, justify="left" if column == "stack" else "right")
    for row in rows:
        table.add_row(row["stack"], str(row["concurrency"]),
                      f"{row['tokens_per_s']:.1f} ({', '.join(f'{x:.0f}' for x in row['rounds_tokens_per_s'])})",
                      f"{row['tokens_per_s_vs_plain']:.3f}", f"{row['ttft_ms_p50']:.0f}", f"{row['ttft_ms_p99']:.0f}",
                      f"{row['ttft_p50_minus_plain_ms']:+.0f} ms", str(row["failed"]))
    console.print(table)
    wire_rows = {s: {"p50": statistics.median(v), "p99": max(v) if len(v) < 100 else sorted(v)[98 * len(v) // 100],
                     "mean": statistics.fmean(v)} for s, v in wire.items()}
    table = Table(title=f"TTFT at the wire (httpx), one request at a time, {args.wire_requests} each ({cpu})")
    for column in ("stack", "p50 ms", "max ms", "mean ms", "p50 − plain"):
        table.add_column(column, justify="left" if column == "stack" else "right")
    for stack, row in wire_rows.items():
        table.add_row(stack, f"{row['p50']:.1f}", f"{row['p99']:.1f}", f"{row['mean']:.1f}",
                      f"{row['p50'] - wire_rows['plain']['p50']:+.1f} ms")
    console.print(table)
    table = Table(title="Memory (RSS)")
    for column in ("stack", "process holding the model", "whole stack"):
        table.add_column(column, justify="left" if column == "stack" else "right")
    for stack, row in memory.items():
        table.add_row(stack, f"{row['model_process_mb']:.0f} MiB", f"{row['stack_mb']:.0f} MiB")
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu, "model": MODEL, "max_tokens": args.max_tokens,
                                             "threads": args.threads, "rounds": args.rounds, "rows": rows,
                                             "wire_ttft_ms": wire_rows, "memory": memory}, indent=2))
    console.print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
