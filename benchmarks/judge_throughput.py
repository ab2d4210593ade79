"""MT-bench judging throughput: `--parallel 16` vs `--parallel 1` against a parley server, in one run.

    python benchmarks/judge_throughput.py [--data-dir ../shared/data/mt_bench] [--questions 8]
                                          [--engine llamacpp] [--judge-max-tokens 64] [--parallel 16]

Starts `parley serve` with the bundled model (the judge) on free ports, then judges the published
GPT-4 answers to the first --questions questions (single grading, both turns: 2 judgments per
question) twice — one call at a time, then --parallel at a time — into separate judgment files.
Same questions, same judge, same token limit. Prints a table; writes
benchmarks/results/judge_throughput.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import signal
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from serve_stack import start_serve

from parley.eval.chat_client import ChatClient
from parley.eval.mt_bench_files import (
    load_answers,
    load_judge_prompts,
    load_questions,
    read_jsonl,
)
from parley.eval.mt_bench_judge import Judge, make_matches, run_judgments

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


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mt_bench")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--engine", default="llamacpp")
    ap.add_argument("--judge-max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--output", default="benchmarks/results/judge_throughput.json")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 110))
    if not (args.data_dir / "question.jsonl").is_file():
        raise SystemExit(f"{args.data_dir}/question.jsonl is missing: pass --data-dir")

    questions = load_questions(args.data_dir / "question.jsonl", 0, args.questions)
    answers = load_answers(args.data_dir / "model_answer", ["gpt-4"])
    references = {r["question_id"]: r for r in read_jsonl(args.data_dir / "reference_answer" / "gpt-4.jsonl")}
    prompts = load_judge_prompts(args.data_dir / "judge_prompts.jsonl")
    matches, _ = make_matches("single", questions, answers, prompts, references)

    proc, root, model = start_serve(console, "--engine", args.engine)
    base_url = root + "/v1"
    work = Path(tempfile.mkdtemp(prefix="judge-bench-"))
    try:
        await judge_once(base_url, model, matches[:2], work / "warmup.jsonl", 2, 8)
        results = []
        for parallel in (1, args.parallel):
            with console.status(f"judging {len(matches)} answers, --parallel {parallel}"):
                results.append(await judge_once(base_url, model, matches, work / f"p{parallel}.jsonl", parallel,
                                                 args.judge_max_tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    one, wide = results
    table = Table(title=f"judging {len(matches)} published GPT-4 answers with {model} ({args.engine}), "
                        f"≤{args.judge_max_tokens} tokens per judgment ({platform.processor() or platform.machine()})")
    for col in ("--parallel", "judgments", "failed", "wall s", "judgments/min", "completion tok/s", "vs --parallel 1"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["parallel"]), str(r["judgments"]), str(r["failed"]), f"{r['wall_s']:.1f}",
                      f"{r['judgments_per_min']:.1f}", f"{r['completion_tokens_per_s']:.1f}",
                      f"{r['judgments_per_min'] / one['judgments_per_min']:.2f}x")
    console.print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                               "speedup": wide["judgments_per_min"] / one["judgments_per_min"]}, indent=2))
    console.print(f"--parallel {args.parallel} / --parallel 1: {wide['judgments_per_min'] / one['judgments_per_min']:.2f}x; "
                  f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
