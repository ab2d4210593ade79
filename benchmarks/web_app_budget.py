"""The web app's budgets, measured: its JS and CSS gzipped, its first load on 127.0.0.1, and what streaming a
reply through the web server costs against the OpenAI API directly.

    python benchmarks/web_app_budget.py [--users 1,16] [--max-tokens 128] [--rounds 2]

1. The built assets (parley/web/dist, as `make` builds them), each gzipped at level 9: those of a first load,
   and those loaded on demand (KaTeX, for the first formula).
2. First load: headless Chromium (Debian's, driven by Playwright) opens /app/ in a fresh context until the
   model picker is filled (the app has its session and the live model list): the median of 5 loads.
3. Streaming: N users at once each send one chat message (each its own story prompt, temperature 0.7,
   --max-tokens new tokens, EOS not ignored): through the web app's JSON API (server-sent events from
   `parley web`, stored as they stream), and through the OpenAI API of the same `parley serve`, taking
   turns within each round; aggregate tokens/s (counted by the usage of each reply), medians of rounds.

Prints a table; writes benchmarks/results/web_app_budget.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table
from serve_stack import REPO, cpu_model, free_port, start_serve
from vs_fastchat import TOPICS

DIST = REPO / "parley" / "web" / "dist"
CHROMIUM = Path("/usr/bin/chromium")


def asset_sizes() -> dict[str, int]:
    """Gzipped bytes of the JS and CSS a first load fetches (what index.html names), and of those loaded on
    demand (KaTeX, the first time a reply has a formula)."""
    index = (DIST / "index.html").read_text()
    sizes = {"js": 0, "css": 0, "js_on_demand": 0, "css_on_demand": 0}
    for path in (DIST / "assets").iterdir():
        kind = path.suffix.lstrip(".")
        if kind in ("js", "css"):
            key = kind if path.name in index else f"{kind}_on_demand"
            sizes[key] += len(gzip.compress(path.read_bytes(), 9))
    return sizes


def first_loads(url: str, loads: int = 5) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        for _ in range(loads):
            context = browser.new_context()
            page = context.new_page()
            started = time.perf_counter()
            page.goto(url + "/app/")
            page.wait_for_selector("select[aria-label=Model] option", state="attached")
            times.append(time.perf_counter() - started)
            context.close()
        browser.close()
    return times


async def through_web(web: str, model: str, users: int, max_tokens: int, seed: int) -> int:
    async def one(i: int) -> int:
        async with httpx.AsyncClient(base_url=web + "/api", timeout=600) as http:
            csrf = (await http.get("/session")).json()["csrf_token"]
            headers = {"X-CSRF-Token": csrf}
            cid = (await http.post("/conversations", json={"model": model}, headers=headers)).json()["id"]
            body = {"content": f"Tell me a long story about {TOPICS[(seed + i) % len(TOPICS)]}.", "model": model,
                    "parameters": {"temperature": 0.7, "max_tokens": max_tokens}}
            ended = None
            async with http.stream("POST", f"/conversations/{cid}/messages", json=body, headers=headers) as r:
                event = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "ended":
                        ended = json.loads(line[6:])["reply"]
            return (ended or {}).get("completion_tokens") or 0

    return sum(await asyncio.gather(*(one(i) for i in range(users))))


async def through_api(api: str, model: str, users: int, max_tokens: int, seed: int) -> int:
    client = openai.AsyncOpenAI(base_url=api + "/v1", api_key="unused", timeout=600, max_retries=0)

    async def one(i: int) -> int:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Tell me a long story about "
                                                               f"{TOPICS[(seed + i) % len(TOPICS)]}."}],
            temperature=0.7, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
        tokens = 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    try:
        return sum(await asyncio.gather(*(one(i) for i in range(users))))
    finally:
        await client.close()


async def rate(run, *args) -> float:
    started = time.perf_counter()
    tokens = await run(*args)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1,16")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "web_app_budget.json"))
    args = ap.parse_args()
    console = Console()
    if not (DIST / "index.html").is_file():
        raise SystemExit(f"the web app is not built ({DIST}): run make install")
    sizes = asset_sizes()
    web_port = free_port()
    db = Path(tempfile.mkdtemp(prefix="parley-budget-")) / "parley.db"
    proc, api, model = start_serve(console, "--web-port", str(web_port), "--db-url", f"sqlite:///{db}")
    web = f"http://127.0.0.1:{web_port}"
    try:
        loads = first_loads(web) if CHROMIUM.exists() else []
        rows = []
        for users in (int(u) for u in args.users.split(",")):
            web_rates, api_rates = [], []
            for r in range(args.rounds + 1):  # the first round warms up
                w = asyncio.run(rate(through_web, web, model, users, args.max_tokens, r * users))
                a = asyncio.run(rate(through_api, api, model, users, args.max_tokens, r * users))
                if r:
                    web_rates.append(w)
                    api_rates.append(a)
                console.log(f"{users} user(s), round {r}: web app {w:.1f} tok/s, OpenAI API {a:.1f} tok/s")
            rows.append({"users": users, "web_tokens_per_s": statistics.median(web_rates),
                         "api_tokens_per_s": statistics.median(api_rates)})
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    table = Table(title=f"the web app's budgets ({cpu_model()}): JS {sizes['js'] / 1024:.1f} KiB and CSS "
                        f"{sizes['css'] / 1024:.1f} KiB gzipped (on demand: {sizes['js_on_demand'] / 1024:.1f} and "
                        f"{sizes['css_on_demand'] / 1024:.1f} KiB); first load "
                        f"{statistics.median(loads) * 1000:.0f} ms (median of {len(loads)})" if loads else "")
    for col in ("users", "web app tok/s", "OpenAI API tok/s", "web / API"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row["users"]), f"{row['web_tokens_per_s']:.1f}", f"{row['api_tokens_per_s']:.1f}",
                      f"{row['web_tokens_per_s'] / row['api_tokens_per_s']:.2f}")
    console.print(table)
    report = {"cpu": cpu_model(), "gzipped_bytes": sizes, "first_load_s": loads, "max_tokens": args.max_tokens,
              "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
