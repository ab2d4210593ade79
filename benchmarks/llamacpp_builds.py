"""Two builds of llama.cpp (llama-cpp-python wheels) on the bundled model, on this CPU, in one run.

    python benchmarks/llamacpp_builds.py --build native=DIR --build portable=DIR [--rounds 3]

Each DIR is an unpacked llama-cpp-python wheel (`python -m zipfile -e WHEEL DIR`); with no --build,
the one installed in this environment is measured as "installed". For each round, alternating
builds, a fresh process with that build first on PYTHONPATH loads parley's llama.cpp engine and
measures prompt processing (a 256-token prompt, tokens/s) and generation (one stream and
--concurrency streams of --max-tokens tokens each, greedy, EOS ignored, tokens/s). Medians over
the rounds are compared against the first build. Prints a table; writes
benchmarks/results/llamacpp_builds.json (or --output), with lscpu's model name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

# Run in the child process, with the build under test first on sys.path.
from serve_stack import cpu_model

MEASURE = r'''
import asyncio, json, sys, time
import llama_cpp
from parley.conversation.formatter import ChatFormatter
from parley.engines.engine_options import LlamaCppOptions
from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.llamacpp import LlamaCppEngine
from parley.models.source import resolve_model_source

concurrency, max_tokens = int(sys.argv[1]), int(sys.argv[2])
engine = LlamaCppEngine.create(resolve_model_source(None), LlamaCppOptions(max_batch_size=concurrency))
fmt = ChatFormatter.for_model(engine.model_info)

def request(text, n):
    prompt = fmt.render([{"role": "user", "content": text}])
    return GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens,
                             params=SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True))

async def rate(reqs):
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return results, time.perf_counter() - start

async def main():
    await rate([request("Hi", 4)])  # warm-up
    long = "Summarize: " + " ".join(f"item {i} is a red apple." for i in range(40))
    results, s = await rate([request(long, 1)])
    prefill = results[0].usage.prompt_tokens / s
    results, s = await rate([request("Tell me a long story about the sea.", max_tokens)])
    one = results[0].usage.completion_tokens / s
    results, s = await rate([request(f"Tell me a long story about topic {i}.", max_tokens) for i in range(concurrency)])
    many = sum(r.usage.completion_tokens for r in results) / s
    print(json.dumps({"system_info": llama_cpp.llama_print_system_info().decode().strip(), "prefill": prefill,
                      "one": one, "many": many}))
    await engine.aclose()

asyncio.run(main())
'''




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", default=[], help="NAME=DIR of an unpacked llama-cpp-python wheel")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--output", default="benchmarks/results/llamacpp_builds.json")
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in args.build) or {"installed": ""}
    samples: dict[str, list[dict]] = {name: [] for name in builds}
    with Progress() as progress:
        task = progress.add_task("measuring", total=args.rounds * len(builds))
        for _ in range(args.rounds):
            for name, path in builds.items():
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)}
                done = subprocess.run([sys.executable, "-c", MEASURE, str(args.concurrency), str(args.max_tokens)],
                                      env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"build {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                samples[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                progress.advance(task)

    metrics = {"prefill": "prompt tokens/s", "one": "1 stream tokens/s", "many": f"{args.concurrency} streams tokens/s"}
    medians = {name: {k: statistics.median(s[k] for s in runs) for k in metrics} for name, runs in samples.items()}
    first = next(iter(medians))
    table = Table(title=f"llama.cpp builds, bundled model, {cpu_model()} ({os.cpu_count()} cores), "
                        f"median of {args.rounds}")
    table.add_column("build")
    for label in metrics.values():
        table.add_column(label, justify="right")
    for name, m in medians.items():
        table.add_row(name, *(f"{m[k]:.1f} ({m[k] / medians[first][k]:.2f}×)" for k in metrics))
    Console().print(table)
    for name, runs in samples.items():
        print(f"{name}: {runs[0]['system_info']}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "rounds": args.rounds,
                               "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                               "builds": builds, "medians": medians, "samples": samples}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
