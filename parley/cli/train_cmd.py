"""`parley train sft`: fine-tune a chat model on conversations (loss on assistant turns only), full or LoRA/QLoRA."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune chat models", description=__doc__)
    kinds = p.add_subparsers(dest="train_kind", required=True, metavar="KIND")
    s = kinds.add_parser("sft", help="supervised fine-tuning on multi-turn conversations",
                         description="Supervised fine-tuning on ShareGPT or OpenAI-format conversations (JSON or JSONL). "
                                     "Multi-GPU: accelerate launch -m parley train sft ... (see the README).")
    s.add_argument("--model-path", default=None, help="base model: a directory, .gguf file or hub id "
                                                      "(default: the bundled SmolLM2-135M-Instruct)")
    s.add_argument("--data-path", type=Path, required=True)
    s.add_argument("--output-dir", type=Path, required=True)
    s.add_argument("--conv-template", "--chat-template", dest="chat_template", default=None,
                   help="train with this template instead of the model's own: a named one (vicuna_v1.1, llama-2, "
                        "chatml, ...: the README lists them) or a Jinja file; the output carries it and is served "
                        "with it")
    g = s.add_argument_group("LoRA / QLoRA")
    g.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--lora-target-modules", default="all-linear", help="comma-separated names, or all-linear")
    g.add_argument("--q-lora", action="store_true", help="LoRA on 4-bit (NF4) base weights; needs CUDA")
    g = s.add_argument_group("training")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--max-length", type=int, default=2048, help="tokens per conversation (longer ones are cut)")
    g.add_argument("--packing", action="store_true",
                   help="padding-free batches: each batch's conversations share one row, attention and positions "
                        "kept within each conversation; no compute spent on padding")
    g.add_argument("--num-train-epochs", type=float, default=3.0)
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: the epochs)")
    g.add_argument("--learning-rate", type=float, default=2e-5)
    g.add_argument("--per-device-train-batch-size", type=int, default=2)
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--warmup-ratio", type=float, default=0.03)
    g.add_argument("--lr-scheduler-type", default="cosine")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--save-steps", type=int, default=500)
    g.add_argument("--logging-steps", type=int, default=10)
    g.add_argument("--resume", action="store_true", help="go on from the last checkpoint in --output-dir")
    g.add_argument("--seed", type=int, default=42)
    s.set_defaults(run=run_sft_cmd, default_log_level="INFO")


def run_sft_cmd(args: argparse.Namespace) -> int:
    from parley.train.sft import SFTConfig, run_sft

    fields = set(SFTConfig.model_fields)
    config = SFTConfig(**{k: v for k, v in vars(args).items() if k in fields})
    result = run_sft(config)
    loss = (f"loss {result.first_loss:.3f} -> {result.last_loss:.3f}; " if result.first_loss is not None else "")
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s; {loss}"
          f"{result.trained_tokens_per_s:.0f} trained tokens/s; saved to {result.output_dir}")
    print(f"serve it: parley worker --model-path {result.output_dir}   (or: parley chat --model-path {result.output_dir})")
    return 0
