"""API keys and limits: what checking a user's key and counting its limits adds to a request, the tokens/s of the
API with and without users' keys, and the accuracy of a rate limit under concurrency, in one run.

    python benchmarks/api_keys.py [--iterations 3000] [--rounds 2] [--requests 32] [--max-tokens 64]

(a) Added latency, in this process: what a request to a model goes through before its work and after it (the key
    check of `parley api`, parley.serving.key_auth: the Authorization header, the cached answer, the model check,
    the limits' admission; then its usage event handed to the background writer), p50 and p99 over --iterations,
    with no key needed (today's default), a user's key without limits and one with limits (the rate-limit counters
    in the database: a transaction per request), on SQLite and on PostgreSQL (a throwaway server), and a key's first
    check (the database lookup that the cache then saves for 2 s).
(b) Throughput: a controller, a worker with the bundled model (llama.cpp) and two `parley api` processes on it, one
    without keys and one with --auth and a user's key with limits (high enough never to refuse: every request is
    admitted by the counters and recorded as usage); --concurrent streams (default 16), greedy, EOS ignored,
    --rounds alternating between the two. Median tokens/s of each.
(c) Accuracy: 50 requests at once against a key limited to 10 per minute, through the keyed API: how many are
    admitted (exactly 10 is right).

Prints a table; writes benchmarks/results/api_keys.json (or --output).
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

import openai
from knowledge_common import database
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model
from sqlalchemy import func, select

from parley.bench.load import percentiles, run_load
from parley.serving.key_auth import KeyAuth
from parley.serving.openai_schemas import UsageInfo
from parley.serving.openai_serving import APIRequest
from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys, KeySpec
from parley.store.database import Database
from parley.store.models import UsageRecord
from parley.store.usage import UsageRecorder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import start_api, start_controller, start_worker  # noqa: E402 - the tests' process helpers

MODEL = "smollm2-135m-instruct"
GENEROUS = {"rpm": 1_000_000, "tpm": 1_000_000_000, "token_budget": 2_000_000_000}  # limits that never refuse here


# -- (a) the added latency, in this process --------------------------------------------------------------------


async def one_request(keys: KeyAuth, recorder: UsageRecorder | None, header: str | None) -> float:
    """What the API does for a request besides its work: the key check (the route's dependency), the model check,
    the limits, and the usage event at the end. Seconds."""
    started = time.perf_counter()
    caller = await keys.check(header)
    request = APIRequest(caller, "/v1/chat/completions", MODEL, recorder)
    keys.check_model(caller, MODEL)
    await keys.admit(caller)
    request.finish(200, UsageInfo(prompt_tokens=20, completion_tokens=10, total_tokens=30))
    return time.perf_counter() - started


async def measure(keys: KeyAuth, recorder: UsageRecorder | None, header: str | None, n: int, progress, what: str
                  ) -> dict[str, float]:
    task = progress.add_task(what, total=n)
    await one_request(keys, recorder, header)  # the first is the cache's miss
    times = []
    for _ in range(n):
        times.append(await one_request(keys, recorder, header))
        progress.advance(task)
    return percentiles(times, 1e6)  # µs


async def added_latency(kind: str, n: int, progress) -> dict[str, dict]:
    with database(kind) as db:
        user = Accounts(db).create("bench", None)
        plain = ApiKeys(db).create(user, KeySpec(name="no limits")).secret
        limited = ApiKeys(db).create(user, KeySpec(name="limits", **GENEROUS)).secret
        recorder = UsageRecorder(db)
        await recorder.start()
        try:
            results = {}
            if kind == "sqlite":  # no database in the way: the same on either
                results["no key needed"] = await measure(KeyAuth([], None, required=False), None, None, n, progress,
                                                         "no key needed")
            keys = KeyAuth([], db, required=True)
            results["user's key, no limits"] = await measure(keys, recorder, f"Bearer {plain}", n, progress,
                                                             f"{kind}: key without limits")
            results["user's key with limits"] = await measure(keys, recorder, f"Bearer {limited}", n, progress,
                                                              f"{kind}: key with limits")
            uncached = KeyAuth([], db, required=True, ttl_s=0)  # every check a lookup
            results["key's first check (lookup)"] = await measure(uncached, recorder, f"Bearer {plain}", n // 10,
                                                                  progress, f"{kind}: uncached key check")
        finally:
            await recorder.stop()
        return results


# -- (b) throughput and (c) accuracy through real servers ---------------------------------------------------------


async def accuracy(url: str, key: str) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)

    async def status() -> int:
        try:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=1)
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    left = 60 - time.time() % 60  # the limit counts calendar minutes: all 50 in one
    if left < 10:
        await asyncio.sleep(left + 0.2)
    statuses = await asyncio.gather(*(status() for _ in range(50)))
    await client.close()
    return {"requests": 50, "limit_per_minute": 10, "admitted": statuses.count(200), "refused_429": statuses.count(429),
            "other": len(statuses) - statuses.count(200) - statuses.count(429)}


async def through_the_api(args, console: Console) -> dict:
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'parley.db'}"
        db = Database(url)
        db.upgrade()
        user = Accounts(db).create("bench", None)
        key = ApiKeys(db).create(user, KeySpec(name="bench", **GENEROUS)).secret
        ten = ApiKeys(db).create(user, KeySpec(name="ten a minute", rpm=10)).secret
        servers = []
        try:
            with console.status("starting a controller, a worker with the bundled model and two APIs…"):
                controller = start_controller()
                servers.append(controller)
                servers.append(start_worker(controller, names=MODEL))
                open_api = start_api(controller, "--db-url", url)
                servers.append(open_api)
                keyed_api = start_api(controller, "--db-url", url, "--auth")
                servers.append(keyed_api)
            for api, api_key in ((open_api, None), (keyed_api, key)):  # warm-up
                await run_load(api.url + "/v1", MODEL, 2, 2, 8, api_key=api_key, ignore_eos=True)
            runs: dict[str, list] = {"no keys": [], "user's key with limits": []}
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{args.concurrent} streams, {args.rounds} rounds each way",
                                         total=2 * args.rounds * args.requests)
                for _ in range(args.rounds):
                    for name, api, api_key in (("no keys", open_api, None),
                                               ("user's key with limits", keyed_api, key)):
                        result = await run_load(api.url + "/v1", MODEL, args.concurrent, args.requests,
                                                args.max_tokens, api_key=api_key, ignore_eos=True,
                                                on_done=lambda: progress.advance(task))
                        runs[name].append(result.model_dump())
            with console.status("50 requests at once against 10 a minute…"):
                accurate = await accuracy(keyed_api.url, ten)
        finally:
            for server in reversed(servers):
                server.stop()
        with db.session() as s:
            recorded = s.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.key_id.is_not(None)))
        db.close()
    return {"runs": runs, "accuracy": accurate, "usage_rows_of_keys": recorded}


async def run(args, console: Console) -> dict:
    latency = {}
    with Progress(console=console, transient=True) as progress:
        for kind in args.db:
            latency[kind] = await added_latency(kind, args.iterations, progress)
    return {"latency_us": latency, **await through_the_api(args, console)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3000, help="requests per latency measurement")
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests per throughput round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "api_keys.json"))
    args = parser.parse_args()
    args.db = args.db or ["sqlite", "postgresql"]
    console = Console(width=max(Console().width, 120))
    out = asyncio.run(run(args, console))

    table = Table(title=f"Key check + limits per request, in process ({cpu_model()})")
    for column in ("database", "path", "p50 µs", "p99 µs", "added p50 µs"):
        table.add_column(column, justify="right")
    base = out["latency_us"]["sqlite"]["no key needed"]["p50"] if "sqlite" in out["latency_us"] else 0.0
    for kind, rows in out["latency_us"].items():
        for path, p in rows.items():
            table.add_row(kind if path != "no key needed" else "-", path, f"{p['p50']:.1f}", f"{p['p99']:.1f}",
                          "" if path == "no key needed" else f"{p['p50'] - base:.1f}")
    console.print(table)

    runs = out["runs"]
    tps = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    table = Table(title=f"{MODEL} (llama.cpp) through the API, {args.concurrent} streams, {args.max_tokens} tokens "
                        f"each, EOS ignored, median of {args.rounds} rounds")
    for column in ("API", "tokens/s (rounds)", "TTFT p50 ms", "failed", "vs no keys"):
        table.add_column(column, justify="right")
    for name, rs in runs.items():
        each = ", ".join(f"{r['tokens_per_s']:.1f}" for r in rs)
        table.add_row(name, f"{tps[name]:.1f} ({each})",
                      f"{statistics.median(r['ttft_ms']['p50'] for r in rs):.0f}", str(sum(r["failed"] for r in rs)),
                      f"{tps[name] / tps['no keys']:.3f}x")
    console.print(table)
    a = out["accuracy"]
    console.print(f"accuracy: {a['requests']} requests at once against {a['limit_per_minute']}/min: {a['admitted']} "
                  f"admitted, {a['refused_429']} refused with 429, {a['other']} other "
                  f"({'exact' if a['admitted'] == a['limit_per_minute'] else 'WRONG'}); "
                  f"{out['usage_rows_of_keys']} usage rows recorded for keys")
    out["summary"] = {"tokens_per_s": tps, "throughput_ratio": tps["user's key with limits"] / tps["no keys"]}
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cpu": cpu_model(), "args": vars(args), **out}, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
