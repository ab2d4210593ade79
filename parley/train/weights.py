"""Model weights after training: merge a LoRA adapter into its base; weight deltas (make and apply).

Deltas work tensor by tensor over safetensors shards (`safe_open`), so neither model is ever
loaded whole: the low-memory path that publishing a fine-tune as a diff against its base needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.progress import track

from parley.errors import ParleyError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


def merge_lora(base: str | None, adapter: Path, output: Path) -> Path:
    """Base + adapter as one full model directory (weights, config, tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parley.engines.hf.loading import adapter_base, model_directory
    from parley.models.source import SourceKind, resolve_model_source

    source = resolve_model_source(str(adapter))
    if source.kind is not SourceKind.ADAPTER:
        raise ParleyError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    base_dir = model_directory(resolve_model_source(base) if base else adapter_base(source))
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output)
    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(output)
    return output


def _shards(directory: Path) -> list[Path]:
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise ParleyError(f"{directory} has no .safetensors weights")
    return shards


def _tensor_index(directory: Path) -> dict[str, Path]:
    from safetensors import safe_open

    index = {}
    for shard in _shards(directory):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():
                index[key] = shard
    return index


def _combine(base_dir: Path, other_dir: Path, output: Path, sign: float, what: str) -> Path:
    """output = other + sign * base, tensor by tensor, shard by shard (the other model's shard layout)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_index = _tensor_index(base_dir)
    output.mkdir(parents=True, exist_ok=True)
    for shard in track(_shards(other_dir), description=what):
        tensors = {}
        with safe_open(str(shard), "pt") as f:
            metadata = f.metadata()
            for key in f.keys():
                if key not in base_index:
                    raise ParleyError(f"{key} is in {other_dir} but not in the base {base_dir}: not the same architecture")
                with safe_open(str(base_index[key]), "pt") as b:
                    base_tensor = b.get_tensor(key)
                tensor = f.get_tensor(key)
                if tensor.shape != base_tensor.shape:
                    raise ParleyError(f"{key}: shape {tuple(tensor.shape)} vs the base's {tuple(base_tensor.shape)}")
                tensors[key] = (tensor.float() + sign * base_tensor.float()).to(tensor.dtype).contiguous()
        save_file(tensors, str(output / shard.name), metadata=metadata or {"format": "pt"})
    for name in ("config.json", "model.safetensors.index.json", *TOKENIZER_FILES):
        if (other_dir / name).is_file():
            shutil.copy(other_dir / name, output / name)
    return output


def make_delta(base: Path, target: Path, output: Path) -> Path:
    """target - base, for publishing a fine-tune without the base weights."""
    out = _combine(base, target, output, -1.0, "making the delta")
    (out / "parley_delta.json").write_text(json.dumps({"delta_of": str(target), "base": str(base)}, indent=2))
    return out


def apply_delta(base: Path, delta: Path, output: Path) -> Path:
    """base + delta: the fine-tuned model back."""
    out = _combine(base, delta, output, 1.0, "applying the delta")
    (out / "parley_delta.json").unlink(missing_ok=True)
    return out
