"""MT-bench judging throughput against a parley server, in one run: `--parallel 16` vs `--parallel 1`, or
(`--prefix-reuse`) with the engine's prefix cache vs without it.

    python benchmarks/judge_throughput.py [--data-dir ../shared/data/mt_bench] [--questions 8]
                                          [--models gpt-4] [--engine llamacpp] [--judge-max-tokens 64]
                                          [--parallel 16] [--prefix-reuse]

Starts `parley serve` with the bundled model (the judge) on free ports, then judges the published
answers of --models to the first --questions questions (single grading, both turns: 2 judgments per
question and model, in MT-bench's order: question by question) twice into separate judgment files:
one call at a time, then --parallel at a time; or, with --prefix-reuse, --parallel at a time on a
server with the prefix cache (the default) and on one started with `--prefix-cache-entries 0`. Same
questions, same judge, same token limit. Prints a table; writes benchmarks/results/judge_throughput.json
(or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model, free_port, start_serve

from parley.eval.chat_client import ChatClient
from parley.eval.mt_bench_files import (
    load_answers,
    load_judge_prompts,
    load_questions,
    read_jsonl,
)
from parley.eval.mt_bench_judge import Judge, make_matches, run_judgments
from parley.serving.cluster_auth import auth_headers, new_secret

REPO = Path(__file__).resolve().parents[1]






async def judge_once(base_url: str, model: str, matches, output: Path, parallel: int, max_tokens: int) -> dict:
    client = ChatClient(model, base_url, retries=0)
    try:
        started = time.perf_counter()
        run = await run_judgments(Judge(client, max_tokens), matches, output, parallel=parallel, quiet=True)
        wall = time.perf_counter() - started
    finally:
        await client.aclose()
    return {"parallel": parallel, "judgments": run.judged, "failed": run.failed, "wall_s": wall,
            "judgments_per_min": 60 * run.judged / wall, "completion_tokens": run.usage.completion_tokens,
            "prompt_tokens": run.usage.prompt_tokens, "completion_tokens_per_s": run.usage.completion_tokens / wall}


def cached_prompt_tokens(worker: str, secret: str) -> int:
    """The prompt tokens the worker's engine has taken from its prefix cache so far (its /metrics)."""
    response = httpx.get(worker + "/metrics", headers=auth_headers(secret), timeout=10)
    response.raise_for_status()
    text = response.text
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("parley_prompt_tokens_reused{")))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mt_bench")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--engine", default="llamacpp")
    ap.add_argument("--judge-max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--models", default="gpt-4", help="comma-separated: whose published answers are judged")
    ap.add_argument("--prefix-reuse", action="store_true",
                    help="compare the prefix cache on and off (at --parallel) instead of --parallel 1 and N")
    ap.add_argument("--output", default="benchmarks/results/judge_throughput.json")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 110))
    if not (args.data_dir / "question.jsonl").is_file():
        raise SystemExit(f"{args.data_dir}/question.jsonl is missing: pass --data-dir")

    questions = load_questions(args.data_dir / "question.jsonl", 0, args.questions)
    answers = load_answers(args.data_dir / "model_answer", args.models.split(","))
    references = {r["question_id"]: r for r in read_jsonl(args.data_dir / "reference_answer" / "gpt-4.jsonl")}
    prompts = load_judge_prompts(args.data_dir / "judge_prompts.jsonl")
    matches, _ = make_matches("single", questions, answers, prompts, references)

    # each server (its extra `parley serve` flags) with the runs made on it: (label, --parallel)
    if args.prefix_reuse:
        plan = {(): [("prefix cache", args.parallel)],
                ("--prefix-cache-entries", "0"): [("no prefix cache", args.parallel)]}
    else:
        plan = {(): [("", 1), ("", args.parallel)]}
    results = []
    work = Path(tempfile.mkdtemp(prefix="judge-bench-"))
    secret = new_secret()  # the benchmark reads the worker's /metrics, which the cluster's secret guards
    secret_file = work / "cluster-secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    try:
        for extra, runs in plan.items():  # one server at a time on the machine
            worker_port = free_port()
            proc, root, model = start_serve(console, "--engine", args.engine, "--cluster-secret-file",
                                            str(secret_file), *extra, worker_port=worker_port)
            worker = f"http://127.0.0.1:{worker_port}"
            try:
                await judge_once(root + "/v1", model, matches[:2], work / "warmup.jsonl", 2, 8)
                for label, parallel in runs:
                    reused_before = cached_prompt_tokens(worker, secret)
                    with console.status(f"judging {len(matches)} answers, --parallel {parallel} {label}"):
                        result = await judge_once(root + "/v1", model, matches, work / f"run{len(results)}.jsonl",
                                                  parallel, args.judge_max_tokens)
                    results.append(result | {"label": label, "serve_args": list(extra),
                                             "cached_prompt_tokens": cached_prompt_tokens(worker, secret) - reused_before})
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wide, base = (results[0], results[1]) if args.prefix_reuse else (results[1], results[0])
    table = Table(title=f"judging {len(matches)} published answers ({args.models}) with {model} ({args.engine}), "
                        f"≤{args.judge_max_tokens} tokens per judgment ({cpu_model()})")
    first = "run" if args.prefix_reuse else "--parallel"
    for col in (first, "judgments", "failed", "wall s", "judgments/min", "completion tok/s", "prompt tokens reused",
                f"vs {'no prefix cache' if args.prefix_reuse else '--parallel 1'}"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(f"{r['label']} (--parallel {r['parallel']})" if r["label"] else str(r["parallel"]),
                      str(r["judgments"]), str(r["failed"]), f"{r['wall_s']:.1f}",
                      f"{r['judgments_per_min']:.1f}", f"{r['completion_tokens_per_s']:.1f}",
                      str(r["cached_prompt_tokens"]), f"{r['judgments_per_min'] / base['judgments_per_min']:.2f}x")
    console.print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "cpu": cpu_model(), "args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                               "speedup": wide["judgments_per_min"] / base["judgments_per_min"]}, indent=2))
    what = "prefix cache / none" if args.prefix_reuse else f"--parallel {args.parallel} / --parallel 1"
    console.print(f"{what}: {wide['judgments_per_min'] / base['judgments_per_min']:.2f}x; wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
