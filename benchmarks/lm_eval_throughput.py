"""lm-evaluation-harness log-likelihood throughput against parley: requests/s with `num_concurrent` 1 and 8, in one run.

    python benchmarks/lm_eval_throughput.py [--copies 5] [--rounds 2] [--concurrency 1 8]

`parley serve --embedding-model none` on the bundled model (llama.cpp engine; no embedding model beside it, so
nothing else takes the CPU); lm-eval's `local-completions` model (its Python API, `lm_eval.simple_evaluate`,
with `tokenized_requests=True`: it tokenizes through parley's /tokenize and scores through /v1/completions with
echo, logprobs and token-id prompts) runs the tiny local multiple-choice task of benchmarks/lm_eval_task, its ten
questions repeated --copies times (4 log-likelihood requests a question). Each concurrency runs --rounds times,
alternating; the table has the median. The time is lm-eval's whole evaluation (tokenizing included), so requests/s
is what a user of lm-eval gets. Prints a table; writes
benchmarks/results/lm_eval_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from serve_stack import REPO, cpu_model, start_serve

TASK_DIR = REPO / "benchmarks" / "lm_eval_task"
TASK = "parley_tiny_mc"


def task_copy(copies: int, into: Path) -> Path:
    """The tiny task with its questions repeated `copies` times (a task directory for --include_path)."""
    lines = (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()
    data = into / "tiny_mc.jsonl"
    data.write_text("\n".join(lines * copies) + "\n")
    yaml = (TASK_DIR / "tiny_mc.yaml").read_text().replace("benchmarks/lm_eval_task/tiny_mc.jsonl", str(data))
    (into / "tiny_mc.yaml").write_text(yaml)
    return into


def evaluate(url: str, model: str, concurrency: int, tasks) -> tuple[float, int, float]:
    """One evaluation: seconds, log-likelihood requests, accuracy."""
    import lm_eval

    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=[TASK], task_manager=tasks, log_samples=False,
        model_args=f"base_url={url}/v1/completions,model={model},num_concurrent={concurrency},"
                   "tokenized_requests=True,max_retries=1")
    seconds = time.perf_counter() - started
    requests = sum(n["effective"] for n in out["n-samples"].values()) * 4  # four choices a question
    return seconds, requests, out["results"][TASK]["acc,none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=5, help="how many times the ten questions are asked")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "lm_eval_throughput.json"))
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    for name in ("lm_eval", "httpx", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from lm_eval.tasks import TaskManager

    console = Console()
    proc, url, model = start_serve(console, "--embedding-model", "none", "--no-web")
    runs: dict[int, list[tuple[float, int, float]]] = {c: [] for c in args.concurrency}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tasks = TaskManager(include_path=str(task_copy(args.copies, Path(tmp))))
            with console.status("warming up…"):
                evaluate(url, model, max(args.concurrency), tasks)
            for r in range(args.rounds):
                for c in args.concurrency:
                    with console.status(f"round {r + 1} of {args.rounds}: num_concurrent {c}…"):
                        runs[c].append(evaluate(url, model, c, tasks))
    finally:
        proc.terminate()
        proc.wait(30)
    rows = {}
    table = Table(title=f"lm-eval log-likelihood throughput, parley serve (llama.cpp, bundled SmolLM2-135M); "
                        f"{cpu_model()}")
    for column in ("num_concurrent", "requests", "seconds (median)", "requests/s", "acc"):
        table.add_column(column, justify="right")
    for c, results in runs.items():
        seconds = statistics.median(s for s, _, _ in results)
        requests, acc = results[0][1], results[0][2]
        rows[c] = {"requests": requests, "seconds": seconds, "requests_per_s": requests / seconds, "acc": acc,
                   "all_seconds": [s for s, _, _ in results]}
        table.add_row(str(c), str(requests), f"{seconds:.1f}", f"{requests / seconds:.2f}", f"{acc:.2f}")
    console.print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "task": TASK, "copies": args.copies,
                                             "rounds": args.rounds, "by_concurrency": rows}, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
