"""`parley train sft`: supervised fine-tuning on multi-turn conversations, loss on assistant turns only.

Built on transformers' Trainer (progress bar, logging, checkpoints, resume; multi-GPU through
`accelerate launch` or `torchrun`, with the FSDP and DeepSpeed configs in `configs/`), PEFT for
LoRA and QLoRA. The output directory is servable as it is: a full model (weights, tokenizer and
chat template), or a LoRA adapter whose `adapter_config.json` names its base model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from pydantic import BaseModel

from parley.errors import ParleyError
from parley.models.source import SourceKind, resolve_model_source
from parley.train.conversations import Skipped, load_conversations
from parley.train.masks import IGNORE, Collator, MaskBuilder, MaskError

log = logging.getLogger(__name__)


class SFTConfig(BaseModel):
    model_path: str | None = None  # default: the bundled model
    data_path: Path
    output_dir: Path
    chat_template: str | None = None  # a named template, a Jinja file or Jinja text instead of the model's own
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    q_lora: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_length: int = 2048
    packing: bool = False  # padding-free: a batch's conversations share one row, attention kept within each
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 2e-5
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    save_steps: int = 500
    logging_steps: int = 10
    resume: bool = False
    seed: int = 42


class SFTResult(BaseModel):
    output_dir: str
    samples: int
    skipped: list[Skipped]
    trained_tokens: int  # per epoch
    steps: int
    first_loss: float | None
    last_loss: float | None
    train_seconds: float
    trained_tokens_per_s: float
    peak_memory_mb: float | None


def base_model_dir(model_path: str | None) -> str:
    from parley.engines.hf.loading import model_directory

    source = resolve_model_source(model_path)
    if source.kind is SourceKind.ADAPTER:
        raise ParleyError("train from a full model; to go on from an adapter, merge it first (parley model merge-lora)")
    return model_directory(source)


def portable_base_name(model_path: str | None) -> str:
    """What an adapter records as its base model: the bundled model by name (found by any parley install), a
    GGUF by its file (converted again where the conversion cache lacks it); else the directory or hub id."""
    from parley.models.bundled import BUNDLED_MODEL_NAME, bundled_gguf_path

    source = resolve_model_source(model_path)
    if source.kind is SourceKind.GGUF:
        return BUNDLED_MODEL_NAME if source.path.resolve() == bundled_gguf_path().resolve() else source.location
    return source.location  # a model directory or a hub id, as given


def resolve_chat_template(value: str | None, tokenizer) -> str | None:
    """--conv-template: a named template (FastChat's names: vicuna_v1.1, llama-2, chatml, ...), written out as
    an ordinary chat template; a Jinja file; or Jinja text. None: the model's own template."""
    from parley.conversation.templates import NAMED_TEMPLATES, standalone_chat_template

    if not value:
        return None
    if value in NAMED_TEMPLATES:
        adds_bos = bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token is not None
        return standalone_chat_template(NAMED_TEMPLATES[value], bos_token=adds_bos)
    if Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    if "{%" in value or "{{" in value:
        return value
    raise ParleyError(f"--conv-template {value!r} is neither a named template ({', '.join(sorted(NAMED_TEMPLATES))}) "
                      "nor a Jinja file")


def build_dataset(config: SFTConfig, tokenizer) -> tuple[list[dict], list[Skipped], int]:
    """Label-masked rows from the tokenizer's chat template (run_sft puts --conv-template there first)."""
    builder = MaskBuilder(tokenizer)
    samples, skipped = load_conversations(config.data_path)
    rows = []
    for sample in samples:
        try:
            rows.append(builder.build(sample.messages, config.max_length).model_dump())
        except MaskError as exc:
            skipped.append(Skipped(id=sample.id, reason=str(exc)))
    if not rows:
        raise ParleyError(f"no trainable conversations in {config.data_path} ({len(skipped)} skipped)")
    return rows, skipped, sum(sum(label != -100 for label in r["labels"]) for r in rows)


def _lora_config(config: SFTConfig):
    from peft import LoraConfig

    targets = config.lora_target_modules
    modules = targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=modules, task_type="CAUSAL_LM")


def load_trainable_model(config: SFTConfig, model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if config.bf16 else torch.float32
    if config.q_lora:
        if not torch.cuda.is_available():
            raise ParleyError("--q-lora needs a CUDA GPU (4-bit weights come from bitsandbytes); on this machine use "
                              "--lora instead")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": int(os.environ.get("LOCAL_RANK", 0))})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    # No KV cache in training. It also matters for --packing: transformers keeps attention inside each packed
    # conversation only when no cache is passed, and would otherwise let it leak across them.
    model.config.use_cache = False
    if config.lora or config.q_lora:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config(config))
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def make_collator(config: SFTConfig, pad_token_id: int):
    """Padded batches, or with --packing transformers' padding-free flattening: the batch's conversations
    concatenated into one row whose position ids restart at each conversation, from which transformers builds
    attention that stays inside each conversation (SDPA, eager and FlashAttention alike). No compute is
    spent on padding, and the loss is the padded batch's loss."""
    if not config.packing:
        return Collator(pad_token_id)
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)


class _ListDataset:
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def run_sft(config: SFTConfig) -> SFTResult:
    import time

    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    if config.lora and config.q_lora:
        config = config.model_copy(update={"lora": False})  # --q-lora is LoRA on 4-bit weights
    model_dir = base_model_dir(config.model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by the collator, never by id
    template = resolve_chat_template(config.chat_template, tokenizer)
    if template is not None:
        tokenizer.chat_template = template  # trained with it, and saved with it: served as it was trained
    rows, skipped, trained_tokens = build_dataset(config, tokenizer)
    for s in skipped:
        log.warning("skipped sample %s: %s", s.id, s.reason)
    print(f"{len(rows)} conversations, {trained_tokens} trained tokens per epoch; skipped {len(skipped)}"
          + (" (listed above)" if skipped else ""))
    model = load_trainable_model(config, model_dir)
    if config.lora or config.q_lora:
        model.peft_config["default"].base_model_name_or_path = portable_base_name(config.model_path)
        model.print_trainable_parameters()

    config.output_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(config.output_dir)) if config.resume else None
    if config.resume and last is None:
        log.warning("--resume: no checkpoint in %s; starting from the beginning", config.output_dir)
    args = TrainingArguments(
        output_dir=str(config.output_dir), num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay, save_steps=config.save_steps,
        save_total_limit=2, logging_steps=config.logging_steps, bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing and not config.q_lora, report_to=[],
        remove_unused_columns=False, seed=config.seed, logging_first_step=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(rows),
                      data_collator=make_collator(config, tokenizer.pad_token_id))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    model.config.use_cache = True  # the saved model is for generation
    trainer.save_model(str(config.output_dir))  # on the main process only (and gathered, under FSDP/ZeRO-3)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    epochs = output.metrics.get("epoch") or config.num_train_epochs
    seen = trained_tokens * epochs
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else _peak_rss_mb()
    result = SFTResult(output_dir=str(config.output_dir), samples=len(rows), skipped=skipped,
                       trained_tokens=trained_tokens, steps=trainer.state.global_step,
                       first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                       train_seconds=seconds, trained_tokens_per_s=seen / seconds if seconds else math.nan,
                       peak_memory_mb=peak)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(config.output_dir))
        (config.output_dir / "parley_training.json").write_text(json.dumps(
            {"config": json.loads(config.model_dump_json()), "base_model": model_dir, "result": result.model_dump()},
            indent=2, default=str))
    return result


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None
