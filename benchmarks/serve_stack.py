"""What the benchmarks share: free ports, the CPU's name for their tables, and `parley serve` started and
waited for. (Run a benchmark as `python benchmarks/NAME.py`: this directory is then on the import path.)"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    """lscpu's model name: every figure is reported with it (the CPU varies between machines of one kind)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def start_serve(console: Console, *serve_args: str, worker_port: int | None = None) -> tuple[subprocess.Popen, str, str]:
    """`parley serve` on free ports (the worker's on `worker_port` when given, with `serve_args`), once it
    says it is up: the process, the API's URL (http://127.0.0.1:PORT, without /v1) and the first model it
    serves."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "parley", "--log-level", "WARNING", "serve", *serve_args,
                             "--port", str(port), "--controller-port", str(free_port()),
                             "--worker-port", str(worker_port or free_port())],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    with console.status(f"starting parley serve {' '.join(serve_args)}…"):
        while "Press Ctrl-C to stop" not in Path(log.name).read_text():
            if proc.poll() is not None:
                raise SystemExit(f"parley serve exited:\n{Path(log.name).read_text()}")
            time.sleep(0.5)
    model = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
    return proc, f"http://127.0.0.1:{port}", model
