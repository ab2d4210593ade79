"""Batch-1 decode against the memory-bandwidth bound: how close one stream comes to reading the weights
once per token at the machine's measured read bandwidth.

    python benchmarks/bandwidth_bound.py [--tokens 128] [--rounds 3] [--threads N]

1. Read bandwidth: N threads (default: the cores) sum a 1 GiB float32 array (numpy in N threads, and
   torch's N threads where torch is installed), best of --rounds + 2. The host's bandwidth moves with
   its neighbours (20 to 32 GB/s on one machine in one day), so the bound is measured in the same run.
2. The bytes of weights read per token: the F16 file `--weights auto` serves (every weight is read once
   per token; the tied embedding as the output matrix, its row lookup is negligible).
3. Batch-1 decode of --tokens tokens with llama.cpp alone (one context, one sequence, the calling thread),
   and through parley's engine (sampling at temperature 0.7, its model thread, the thread tuner),
   best of --rounds each.

The bound is bandwidth / bytes per token, in tokens/s. Prints a table; writes
benchmarks/results/bandwidth_bound.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from serve_stack import cpu_model

from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.engine_options import LlamaCppOptions
from parley.engines.llamacpp import LlamaCppEngine, _llama_cpp
from parley.models.bundled import bundled_gguf_path
from parley.models.gguf_cache import f16_copy


def read_bandwidth(threads: int, rounds: int) -> float:
    """Bytes/s that `threads` threads read from memory, summing a 1 GiB array: the best of `rounds` with
    numpy in threads and, where torch is installed, with torch's own threads (the higher figure makes the
    lower share of the bound, so the claim errs against parley)."""
    data = np.ones(1 << 28, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - started))
    try:
        import torch
    except ImportError:
        return best
    torch.set_num_threads(threads)
    tensor = torch.from_numpy(data)
    for _ in range(rounds):
        started = time.perf_counter()
        tensor.sum()
        best = max(best, data.nbytes / (time.perf_counter() - started))
    return best


def llama_alone(lib, path: Path, threads: int, tokens: int, rounds: int) -> float:
    """Tokens/s of one sequence decoding token by token in llama.cpp (best of `rounds`)."""
    from llama_cpp import _internals

    model = _internals.LlamaModel(path_model=str(path), params=lib.llama_model_default_params(), verbose=False)
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 1024, 512, 512
    params.n_threads = params.n_threads_batch = threads
    ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
    batch = lib.llama_batch_init(512, 0, 1)
    best = 0.0
    try:
        for _ in range(rounds):
            lib.llama_memory_clear(ctx.memory, True)
            started = None
            for pos in range(tokens + 1):
                batch.n_tokens = 1
                batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = 100 + pos, pos, 1, True
                batch.seq_id[0][0] = 0
                if lib.llama_decode(ctx.ctx, batch) != 0:
                    raise SystemExit("llama_decode failed")
                started = started or time.perf_counter()  # from the second token: the first warms up
            best = max(best, tokens / (time.perf_counter() - started))
    finally:
        lib.llama_batch_free(batch)
        ctx.close()
    return best


async def through_engine(tokens: int, rounds: int) -> float:
    engine = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions())
    best = 0.0
    try:
        for i in range(rounds + 1):
            request = GenerationRequest(prompt=f"Once upon a time, in kingdom number {i},", params=SamplingParams(
                temperature=0.7, max_new_tokens=tokens, ignore_eos=True))
            started = time.perf_counter()
            first = None
            async for chunk in engine.generate_stream(request):
                if first is None and chunk.text:
                    first = time.perf_counter()
            if i:  # the first round warms up; each rate is from the first token on
                best = max(best, (tokens - 1) / (time.perf_counter() - (first or started)))
    finally:
        await engine.aclose()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "bandwidth_bound.json"))
    args = ap.parse_args()
    console = Console()
    lib = _llama_cpp()
    with console.status("measuring read bandwidth…"):
        bandwidth = read_bandwidth(args.threads, args.rounds + 2)
    weights = f16_copy(bundled_gguf_path(), lib)
    per_token = weights.stat().st_size
    bound = bandwidth / per_token
    with console.status("decoding with llama.cpp alone…"):
        alone = llama_alone(lib, weights, args.threads, args.tokens, args.rounds)
    with console.status("decoding through parley's engine…"):
        engine = asyncio.run(through_engine(args.tokens, args.rounds))
    table = Table(title=f"batch-1 decode against the bandwidth bound ({cpu_model()}, {args.threads} threads): "
                        f"{bandwidth / 1e9:.1f} GB/s read, {per_token / 1e6:.1f} MB of F16 weights a token, "
                        f"bound {bound:.1f} tokens/s")
    for col in ("decode", "tokens/s", "of the bound"):
        table.add_column(col, justify="right")
    table.add_row("llama.cpp alone", f"{alone:.1f}", f"{alone / bound:.0%}")
    table.add_row("parley's engine (sampling, tuner)", f"{engine:.1f}", f"{engine / bound:.0%}")
    console.print(table)
    report = {"cpu": cpu_model(), "threads": args.threads, "read_bytes_per_s": bandwidth,
              "weight_bytes_per_token": per_token, "bound_tokens_per_s": bound,
              "llama_alone_tokens_per_s": alone, "engine_tokens_per_s": engine,
              "alone_of_bound": alone / bound, "engine_of_bound": engine / bound}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
