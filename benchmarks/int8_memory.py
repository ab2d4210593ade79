"""Memory and speed of --load-8bit on the CPU against float32, for the README.

    python benchmarks/int8_memory.py [--model-path P]

Each variant loads in a fresh subprocess, so resident memory (RSS) is not shared between
them. Reports the memory the model adds to the process (RSS after one generation, when every
weight has been used, minus RSS before loading), the process's RSS and peak RSS, the
serialized size of the weights, and greedy single-stream tokens/s over 64 new tokens. Prints a table; writes
benchmarks/results/int8_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table


def settled_rss_mib() -> float:
    gc.collect()
    try:  # hand freed heap pages back to the OS (glibc), so RSS shows what is really held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss / 2**20


def measure(model_path: str | None, load_8bit: bool) -> dict:
    import torch

    from parley.conversation.formatter import ChatFormatter
    from parley.engines.base import GenerationRequest, SamplingParams
    from parley.engines.engine_options import TransformersOptions
    from parley.engines.hf.engine import TransformersEngine
    from parley.models.source import resolve_model_source

    baseline_mib = settled_rss_mib()  # python, torch and transformers imported, no model
    engine = TransformersEngine.create(resolve_model_source(model_path), TransformersOptions(load_8bit=load_8bit))
    prompt = ChatFormatter.for_model(engine.model_info).render([{"role": "user", "content": "Tell me a story."}])
    request = GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens,
                                params=SamplingParams(temperature=0, max_new_tokens=64, ignore_eos=True))

    async def run() -> tuple[float, str]:
        await engine.generate(request.model_copy(update={"params": request.params.model_copy(update={"max_new_tokens": 4})}))
        start = time.perf_counter()
        result = await engine.generate(request)
        elapsed = time.perf_counter() - start
        await engine.aclose()
        return result.usage.completion_tokens / elapsed, result.text

    tokens_per_s, text = asyncio.run(run())  # every weight has now been used at least once
    serving_mib = settled_rss_mib()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    buffer = io.BytesIO()  # measured last: serializing takes memory of its own
    torch.save(engine.model.state_dict(), buffer)
    weights_mib = buffer.tell() / 2**20
    return {"variant": "int8" if load_8bit else "float32", "baseline_rss_mib": baseline_mib, "serving_rss_mib": serving_mib,
            "model_rss_mib": serving_mib - baseline_mib, "peak_rss_mib": peak_mib,
            "weights_mib": weights_mib, "tokens_per_s": tokens_per_s, "sample": text[:80]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--output", default="benchmarks/results/int8_memory.json")
    ap.add_argument("--child", choices=["float32", "int8"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.model_path, args.child == "int8")))
        return
    rows = []
    with Console(stderr=True).status("measuring float32 and int8 in fresh processes…"):
        for variant in ("float32", "int8"):
            cmd = [sys.executable, __file__, "--child", variant] + (["--model-path", args.model_path] if args.model_path else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    table = Table(title="--load-8bit on the CPU")
    for col in ("variant", "model in RSS (MiB)", "process RSS serving (MiB)", "peak RSS (MiB)", "weights (MiB)", "tokens/s (1 stream)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], f"{r['model_rss_mib']:.0f}", f"{r['serving_rss_mib']:.0f}", f"{r['peak_rss_mib']:.0f}",
                      f"{r['weights_mib']:.0f}", f"{r['tokens_per_s']:.1f}")
    Console().print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
