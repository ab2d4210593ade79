"""Fine-tuning throughput on the CPU: `parley train sft` vs TRL's SFTTrainer, same data and settings, one run.

    python benchmarks/sft_throughput.py [--data ../shared/data/sft/dummy_conversation.json] [--samples 64]
                                        [--batch-size 4] [--max-length 512] [--lora]

Both train the bundled SmolLM2-135M-Instruct for one epoch on the first --samples conversations,
loss on assistant tokens only (TRL: `assistant_only_loss` with a chat template carrying
{% generation %} markers, the same rendering as the model's own template), fp32, constant learning
rate, each in its own process (so that peak memory is its own); ours once more with --packing
(padding-free batches). Reported: trained (assistant)
tokens per second of training and the process's peak resident memory. Prints a table; writes
benchmarks/results/sft_throughput.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
TRAINERS = {"ours": "parley train sft", "ours-packed": "parley train sft --packing", "trl": "TRL SFTTrainer"}
MARKED_TEMPLATE = (  # SmolLM2's template (default system prompt included), with generation markers for TRL
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def subset(data: Path, n: int, out: Path) -> Path:
    from parley.train.conversations import load_conversations

    samples, _ = load_conversations(data)
    out.write_text("\n".join(json.dumps({"id": s.id, "messages": s.messages}) for s in samples[:n]) + "\n")
    return out


def run_ours(args) -> dict:
    from parley.train.sft import SFTConfig, run_sft

    with tempfile.TemporaryDirectory() as tmp:
        result = run_sft(SFTConfig(data_path=Path(args.subset), output_dir=Path(tmp), num_train_epochs=1,
                                   per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                                   learning_rate=2e-5, warmup_ratio=0, lr_scheduler_type="constant", logging_steps=50,
                                   save_steps=10_000, lora=args.lora, packing=args.worker == "ours-packed"))
    return {"trained_tokens": result.trained_tokens, "train_s": result.train_seconds, "steps": result.steps}


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from parley.train.sft import base_model_dir

    model_dir = base_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = MARKED_TEMPLATE
    rows = [{"messages": json.loads(line)["messages"]} for line in Path(args.subset).read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                           max_length=args.max_length, learning_rate=2e-5, warmup_steps=0, lr_scheduler_type="constant",
                           logging_steps=50, save_strategy="no", report_to=[], assistant_only_loss=True, packing=False, bf16=False,
                           dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config)
        trained = sum(sum(label != -100 for label in row) for row in trainer.train_dataset["labels"])
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return {"trained_tokens": trained, "train_s": seconds, "steps": trainer.state.global_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sft" / "dummy_conversation.json")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--output", default="benchmarks/results/sft_throughput.json")
    ap.add_argument("--worker", choices=list(TRAINERS), help=argparse.SUPPRESS)
    ap.add_argument("--subset", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        measured = (run_trl if args.worker == "trl" else run_ours)(args)
        measured["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(measured))
        return

    console = Console(width=max(Console().width, 110))
    if not args.data.is_file():
        raise SystemExit(f"{args.data} is missing: pass --data")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, args.samples, Path(tmp) / "subset.jsonl")
        for who in TRAINERS:
            with console.status(f"training with {who}…"):
                cmd = [sys.executable, __file__, "--worker", who, "--subset", str(data), "--batch-size",
                       str(args.batch_size), "--max-length", str(args.max_length), *(["--lora"] if args.lora else [])]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{who} failed:\n{done.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT "):])
            r["trained_tokens_per_s"] = r["trained_tokens"] / r["train_s"]
            results[who] = r
    table = Table(title=f"SFT, bundled SmolLM2-135M, {args.samples} conversations, 1 epoch, batch {args.batch_size}, "
                        f"{'LoRA r=8' if args.lora else 'full fine-tuning'}, fp32, CPU")
    for col in ("trainer", "trained tokens", "steps", "train s", "trained tokens/s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for who, r in results.items():
        table.add_row(TRAINERS[who], str(r["trained_tokens"]), str(r["steps"]),
                      f"{r['train_s']:.1f}", f"{r['trained_tokens_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}")
    console.print(table)
    ratio = results["ours"]["trained_tokens_per_s"] / results["trl"]["trained_tokens_per_s"]
    memory = results["ours"]["peak_rss_mb"] / results["trl"]["peak_rss_mb"]
    packing = results["ours-packed"]["trained_tokens_per_s"] / results["ours"]["trained_tokens_per_s"]
    console.print(f"parley / TRL: {ratio:.2f}x trained tokens/s, {memory:.2f}x peak memory; "
                  f"parley --packing / padded: {packing:.2f}x trained tokens/s")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                               "tokens_per_s_ratio": ratio, "peak_memory_ratio": memory,
                               "packing_tokens_per_s_ratio": packing}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
