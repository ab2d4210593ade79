"""xgrammar against llguidance for parley's structured output, in one run.

    python benchmarks/grammar_libraries.py [--repeats 3]

On the bundled model's tokenizer (49,152 tokens): the one-off tokenizer set-up, the time to
compile each JSON schema, and the time per generated token to compute the allowed-token mask
and apply it to a row of logits, while feeding the tokens of a valid instance. Prints a table;
writes benchmarks/results/grammar_libraries.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from transformers import AutoTokenizer

from parley.models.gguf_cache import ensure_converted
from parley.models.source import resolve_model_source

REPO = Path(__file__).resolve().parents[1]

CASES = [
    ("object", {"type": "object"}, {"answer": "Paris", "confidence": 0.9}),
    ("person", {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                  "email": {"type": "string"}},
                "required": ["name", "age", "email"], "additionalProperties": False},
     {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org"}),
    ("nested", {"type": "object", "properties": {
        "city": {"type": "string"},
        "days": {"type": "array", "items": {"type": "object", "properties": {
            "day": {"type": "integer"}, "weather": {"enum": ["sun", "rain", "snow"]}, "high": {"type": "number"}},
            "required": ["day", "weather", "high"]}}},
        "required": ["city", "days"]},
     {"city": "Oslo", "days": [{"day": 1, "weather": "snow", "high": -3.5}, {"day": 2, "weather": "sun", "high": 1}]}),
]


def bench_xgrammar(tokenizer, vocab: int, repeats: int) -> dict:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    setup = time.perf_counter() - t0
    out = {"setup_s": setup, "cases": {}}
    for name, schema, instance in CASES:
        compile_s, step_us = [], []
        tokens = tokenizer.encode(json.dumps(instance), add_special_tokens=False)
        for _ in range(repeats):
            t0 = time.perf_counter()
            compiled = compiler.compile_json_schema(json.dumps(schema), strict_mode=False)
            compile_s.append(time.perf_counter() - t0)
            matcher = xgr.GrammarMatcher(compiled)
            bitmask = xgr.allocate_token_bitmask(1, vocab)
            logits = torch.zeros(1, vocab)
            for tok in tokens:
                t0 = time.perf_counter()
                matcher.fill_next_token_bitmask(bitmask)
                xgr.apply_token_bitmask_inplace(logits, bitmask)
                step_us.append((time.perf_counter() - t0) * 1e6)
                assert matcher.accept_token(tok), f"xgrammar refused a valid token for {name}"
        out["cases"][name] = {"compile_ms": statistics.median(compile_s) * 1e3,
                              "mask_us_p50": statistics.median(step_us), "mask_us_max": max(step_us)}
    return out


def bench_llguidance(tokenizer, vocab: int, repeats: int) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.numpy

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    setup = time.perf_counter() - t0
    out = {"setup_s": setup, "cases": {}}
    for name, schema, instance in CASES:
        compile_s, step_us = [], []
        tokens = tokenizer.encode(json.dumps(instance), add_special_tokens=False)
        for _ in range(repeats):
            t0 = time.perf_counter()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
            matcher = llguidance.LLMatcher(lltok, grammar)
            assert not matcher.is_error(), matcher.get_error()
            compile_s.append(time.perf_counter() - t0)
            bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab)
            logits = np.zeros((1, vocab), dtype=np.float32)
            for tok in tokens:
                t0 = time.perf_counter()
                llguidance.numpy.fill_next_token_bitmask(matcher, bitmask)
                llguidance.numpy.apply_token_bitmask_inplace(logits, bitmask)
                step_us.append((time.perf_counter() - t0) * 1e6)
                assert matcher.consume_token(tok), f"llguidance refused a valid token for {name}: {matcher.get_error()}"
        out["cases"][name] = {"compile_ms": statistics.median(compile_s) * 1e3,
                              "mask_us_p50": statistics.median(step_us), "mask_us_max": max(step_us)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "grammar_libraries.json")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(resolve_model_source(None).path))
    vocab = len(tokenizer)
    results = {}
    for lib, fn in track([("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)], description="libraries"):
        results[lib] = fn(tokenizer, vocab, args.repeats)
    table = Table(title=f"JSON-schema constrained decoding, SmolLM2 tokenizer ({vocab} tokens)")
    for col in ("library", "tokenizer set-up", "schema", "compile", "mask+apply p50", "mask+apply max"):
        table.add_column(col, justify="right" if col not in ("library", "schema") else "left")
    for lib, r in results.items():
        for i, (case, c) in enumerate(r["cases"].items()):
            table.add_row(lib if i == 0 else "", f"{r['setup_s'] * 1e3:.0f} ms" if i == 0 else "", case,
                          f"{c['compile_ms']:.1f} ms", f"{c['mask_us_p50']:.0f} µs", f"{c['mask_us_max']:.0f} µs")
    Console(width=max(Console().width, 110)).print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "vocab": vocab,
                                       "results": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
