"""A small request's latency beside hostile ones, on the real stack, in one run.

    python benchmarks/hostile_requests.py [--rounds 5] [--output benchmarks/results/hostile_requests.json]

Starts `parley serve --no-web` (controller, a transformers worker on the bundled model, the API) on free
ports. For each kind of hostile request, each round: the hostile request is sent, and 0.3 s later a small
chat request (8 greedy tokens) whose latency is timed; "alone" times the small request with nothing beside
it. Medians over the rounds, their ratio to "alone", and what each hostile request got (status, seconds).
Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model, start_serve

REPO = Path(__file__).resolve().parents[1]
SMALL = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}




def slow_schema(branches: int = 12) -> dict:
    """All of three any-ofs of 12 objects: 1,728 combinations for the grammar compiler."""
    return {"allOf": [{"anyOf": [{"type": "object", "properties": {f"k{j}_{i}": {"type": "integer"}},
                                  "additionalProperties": True}
                                 for i in range(branches)]} for j in range(3)]}


def hostile_requests(model: str) -> dict[str, tuple[str, bytes | dict]]:
    """name: (path, JSON body or raw bytes)."""
    huge = "All work and no play makes Jack a dull boy. " * 80_000  # 3.5 MB: under the body limit, over the window
    return {
        "3.5 MB message (tokenized, then refused)": (
            "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": huge}]}),
        "20 MB body": ("/v1/chat/completions", json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "x" * (20 * 1024 * 1024)}]}).encode()),
        "n=128 × 200 prompts": ("/v1/completions", {"model": model, "n": 128, "max_tokens": 16,
                                                     "prompt": [f"prompt {i}" for i in range(200)]}),
        "50 stops of 5 KB": ("/v1/chat/completions", {"model": model, "stop": ["a" * 5000] * 50, **SMALL}),
        "slow JSON schema (compiled)": ("/v1/chat/completions", {
            "model": model, **SMALL, "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": slow_schema()}}}),
    }


async def timed(client: httpx.AsyncClient, path: str, body) -> tuple[int, float]:
    started = time.perf_counter()
    if isinstance(body, bytes):
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = await client.post(path, json=body)
    return response.status_code, time.perf_counter() - started


async def measure(api: str, model: str, rounds: int, console: Console, skip: list[str]) -> list[dict]:
    small = {"model": model, **SMALL}
    rows = []
    async with httpx.AsyncClient(base_url=api, timeout=600) as client:
        await timed(client, "/v1/chat/completions", small)  # warm up
        alone = [(await timed(client, "/v1/chat/completions", small))[1] for _ in range(rounds)]
        rows.append({"beside": "nothing (alone)", "small_s": statistics.median(alone), "ratio": 1.0,
                     "hostile_status": None, "hostile_s": None})
        for name, (path, body) in hostile_requests(model).items():
            if any(s in name for s in skip):
                continue
            smalls, statuses, hostile_times = [], set(), []
            with console.status(f"beside: {name}"):
                for _ in range(rounds):
                    hostile = asyncio.create_task(timed(client, path, body))
                    await asyncio.sleep(0.3)
                    status, seconds = await timed(client, "/v1/chat/completions", small)
                    assert status == 200, f"the small request got {status} beside {name}"
                    smalls.append(seconds)
                    h_status, h_seconds = await hostile
                    statuses.add(h_status)
                    hostile_times.append(h_seconds)
            median = statistics.median(smalls)
            rows.append({"beside": name, "small_s": median, "ratio": median / rows[0]["small_s"],
                         "hostile_status": sorted(statuses), "hostile_s": statistics.median(hostile_times)})
    return rows






def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out the hostile requests whose name contains this (e.g. for an older parley that "
                             "the n=128 × 200 flood freezes)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "hostile_requests.json")
    args = parser.parse_args()
    console = Console()
    proc, api, model = start_serve(console, "--no-web")
    try:
        rows = asyncio.run(measure(api, model, args.rounds, console, args.skip))
    finally:
        proc.terminate()
        proc.wait(60)
    table = Table(title=f"a small request (8 tokens) beside hostile ones — {model}, {cpu_model()}, "
                        f"median of {args.rounds}")
    for column in ("beside", "small request s", "× alone", "hostile got", "hostile s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["beside"], f"{r['small_s']:.2f}", f"{r['ratio']:.2f}",
                      "" if r["hostile_status"] is None else ",".join(map(str, r["hostile_status"])),
                      "" if r["hostile_s"] is None else f"{r['hostile_s']:.2f}")
    console.print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"cpu": cpu_model(), "model": model, "rounds": args.rounds, "rows": rows},
                                      indent=2))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
