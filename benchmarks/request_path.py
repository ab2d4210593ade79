"""The request path between a parley API and a parley worker: bytes on the wire, tokens/s, TTFT.

    python benchmarks/request_path.py [--reply-tokens 2000] [--max-tokens 128] [--concurrency 1,16]

Starts a controller, a worker on the bundled model and an API as separate processes on free
ports. The worker registers under the address of a TCP relay in this process, so every byte the
worker sends the API passes the relay and is counted, whatever protocol the two speak. Then:

1. one streamed chat reply of exactly --reply-tokens tokens (EOS ignored, greedy): bytes sent
   worker -> API, and the same per token;
2. `parley bench`'s load generator through the API at each --concurrency (streaming, EOS
   ignored, greedy, --max-tokens per request): tokens/s and TTFT.

Prints a table; writes benchmarks/results/request_path.json (or --output). Run it on two commits
to compare them: the figures of one run are comparable with each other, runs on a shared machine
less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model, free_port

from parley.bench.load import DEFAULT_PROMPT, run_load

REPO = Path(__file__).resolve().parents[1]






class ByteCountingRelay:
    """Relays TCP connections to `target_port`, counting the bytes the target sends back."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.bytes_from_target = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    self.bytes_from_target += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, target_writer, False),
                             self._pipe(target_reader, client_writer, True))

    async def start(self, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", port)


def spawn(args: list[str], log_dir: Path, name: str) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "parley", "--log-level", "WARNING", *args], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


async def wait_for(url: str, proc: subprocess.Popen, what: str, check=lambda r: True, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode}")
            try:
                response = await http.get(url, timeout=2)
                if response.status_code == 200 and check(response):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit(f"{what} did not come up in {timeout_s} s")


async def one_long_reply(base_url: str, model: str, tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": DEFAULT_PROMPT}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    usage = None
    async with httpx.AsyncClient(timeout=600) as http, http.stream("POST", base_url + "/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage or {}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reply-tokens", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--label", default="", help="a name for this run in the table and the JSON (e.g. a commit)")
    ap.add_argument("--output", default="benchmarks/results/request_path.json")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 110))
    levels = [int(c) for c in args.concurrency.split(",")]

    controller_port, worker_port, relay_port, api_port = (free_port() for _ in range(4))
    relay = ByteCountingRelay(worker_port)
    server = await relay.start(relay_port)
    log_dir = Path(tempfile.mkdtemp(prefix="parley-request-path-"))
    controller = f"http://127.0.0.1:{controller_port}"
    procs = [spawn(["controller", "--port", str(controller_port)], log_dir, "controller")]
    try:
        await wait_for(controller + "/health", procs[0], "the controller")
        procs.append(spawn(["worker", "--port", str(worker_port), "--controller-address", controller,
                            "--worker-address", f"http://127.0.0.1:{relay_port}"], log_dir, "worker"))
        procs.append(spawn(["api", "--port", str(api_port), "--controller-address", controller], log_dir, "api"))
        base_url = f"http://127.0.0.1:{api_port}/v1"
        with console.status("starting the controller, the worker and the API…"):
            await wait_for(base_url + "/models", procs[2], "the API", lambda r: bool(r.json().get("data")))
        model = httpx.get(base_url + "/models").json()["data"][0]["id"]
        await run_load(base_url, model, 1, 1, 8, ignore_eos=True)  # warm-up

        with console.status(f"one streamed reply of {args.reply_tokens} tokens…"):
            relay.bytes_from_target = 0
            usage = await one_long_reply(base_url, model, args.reply_tokens)
            wire = relay.bytes_from_target
        tokens = int(usage.get("completion_tokens", 0))
        loads = []
        for c in levels:
            with console.status(f"load at concurrency {c}…"):
                loads.append(await run_load(base_url, model, c, max(4, 2 * c), args.max_tokens,
                                            ignore_eos=True))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.close()

    cpu = cpu_model()
    table = Table(title=f"{model} through API -> worker{' (' + args.label + ')' if args.label else ''}; {cpu}")
    for col in ("measure", "value"):
        table.add_column(col, justify="right")
    table.add_row(f"worker -> API bytes, one streamed reply of {tokens} tokens", f"{wire:,}")
    table.add_row("  per token", f"{wire / max(tokens, 1):,.0f}")
    for r in loads:
        table.add_row(f"tokens/s at concurrency {r.concurrency} ({args.max_tokens} tokens each)",
                      f"{r.tokens_per_s:.1f}")
        table.add_row(f"  TTFT p50 ms at concurrency {r.concurrency}", f"{r.ttft_ms['p50']:.0f}")
    console.print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"label": args.label, "cpu": cpu, "model": model, "args": vars(args),
                               "reply_tokens": tokens, "worker_to_api_bytes": wire,
                               "load": [r.model_dump() for r in loads]}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
