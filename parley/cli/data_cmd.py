"""`parley data` (clean, split-long, stats, split) and `parley model` (merge-lora, make-delta, apply-delta)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="training data: clean, split long conversations, statistics, train/test split")
    steps = d.add_subparsers(dest="data_step", required=True, metavar="STEP")
    c = steps.add_parser("clean", help="HTML to markdown, drop empty and blocked answers, drop duplicates")
    c.add_argument("input", type=Path)
    c.add_argument("output", type=Path)
    c.add_argument("--keep-blocked", action="store_true", help="keep answers that refuse ('As an AI language model...')")
    c.set_defaults(run=run_clean)
    sl = steps.add_parser("split-long", help="split conversations at round boundaries to fit --max-length tokens")
    sl.add_argument("input", type=Path)
    sl.add_argument("output", type=Path)
    sl.add_argument("--max-length", type=int, required=True)
    sl.add_argument("--model-path", default=None, help="whose tokenizer and chat template count (default: bundled)")
    sl.set_defaults(run=run_split_long)
    st = steps.add_parser("stats", help="conversations, turns, characters and (with a tokenizer) tokens")
    st.add_argument("input", type=Path)
    st.add_argument("--model-path", default=None, help="count tokens with this model's tokenizer (default: bundled)")
    st.add_argument("--no-tokens", action="store_true", help="skip token counts")
    st.set_defaults(run=run_stats)
    sp = steps.add_parser("split", help="a random train/test split")
    sp.add_argument("input", type=Path)
    sp.add_argument("--train-output", type=Path, required=True)
    sp.add_argument("--test-output", type=Path, required=True)
    sp.add_argument("--test-ratio", type=float, default=0.1)
    sp.add_argument("--seed", type=int, default=42)
    sp.set_defaults(run=run_split)

    m = sub.add_parser("model", help="weights: merge a LoRA adapter, make or apply a weight delta")
    steps = m.add_subparsers(dest="model_step", required=True, metavar="STEP")
    ml = steps.add_parser("merge-lora", help="base + LoRA adapter -> one full model directory")
    ml.add_argument("--base", default=None, help="base model (default: the one the adapter names)")
    ml.add_argument("--lora", type=Path, required=True)
    ml.add_argument("--output", type=Path, required=True)
    ml.set_defaults(run=run_merge)
    for name, helptext, run in (("make-delta", "target - base, tensor by tensor (low memory)", run_make_delta),
                                ("apply-delta", "base + delta, tensor by tensor (low memory)", run_apply_delta)):
        step = steps.add_parser(name, help=helptext)
        step.add_argument("--base", required=True, help="base model directory, .gguf or the bundled model's name")
        step.add_argument("--target" if name == "make-delta" else "--delta", dest="other", type=Path, required=True)
        step.add_argument("--output", type=Path, required=True)
        step.set_defaults(run=run)


def _tokenizer(model_path: str | None):
    from transformers import AutoTokenizer

    from parley.train.sft import base_model_dir

    return AutoTokenizer.from_pretrained(base_model_dir(model_path))


def _report_skipped(skipped) -> None:
    for s in skipped:
        print(f"  skipped {s.id}: {s.reason}")


def run_clean(args: argparse.Namespace) -> int:
    from parley.train.data_tools import clean

    report = clean(args.input, args.output, drop_blocked=not args.keep_blocked)
    _report_skipped(report.skipped)
    dropped = ", ".join(f"{n} {why}" for why, n in report.dropped.items())
    print(f"read {report.read}, kept {report.kept} -> {args.output}; dropped: {dropped}; malformed skipped: "
          f"{len(report.skipped)}; messages converted from HTML: {report.html_converted}")
    return 0


def run_split_long(args: argparse.Namespace) -> int:
    from parley.train.data_tools import split_long

    n_in, n_out, skipped = split_long(args.input, args.output, _tokenizer(args.model_path), args.max_length)
    _report_skipped(skipped)
    print(f"{n_in} conversations -> {n_out} parts of at most {args.max_length} tokens (where a round fits) -> "
          f"{args.output}; malformed skipped: {len(skipped)}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from parley.train.data_tools import stats

    print(stats(args.input, None if args.no_tokens else _tokenizer(args.model_path)).model_dump_json(indent=2))
    return 0


def run_split(args: argparse.Namespace) -> int:
    from parley.train.data_tools import split

    n_train, n_test = split(args.input, args.train_output, args.test_output, args.test_ratio, args.seed)
    print(f"train {n_train} -> {args.train_output}; test {n_test} -> {args.test_output}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from parley.train.weights import merge_lora

    print(f"merged model written to {merge_lora(args.base, args.lora, args.output)}")
    return 0


def _model_dir(path: str) -> Path:
    from parley.train.sft import base_model_dir

    return Path(base_model_dir(path))


def run_make_delta(args: argparse.Namespace) -> int:
    from parley.train.weights import make_delta

    print(f"delta written to {make_delta(_model_dir(args.base), _model_dir(str(args.other)), args.output)}")
    return 0


def run_apply_delta(args: argparse.Namespace) -> int:
    from parley.train.weights import apply_delta

    print(f"model written to {apply_delta(_model_dir(args.base), args.other, args.output)}")
    return 0
