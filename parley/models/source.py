"""Turn a `--model-path` value into a description of what to load, or a one-line error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from parley.errors import ModelPathError
from parley.models.bundled import (
    BUNDLED_EMBEDDING_NAME,
    BUNDLED_MODEL_NAME,
    bundled_embedding_dir,
    bundled_gguf_path,
)


class SourceKind(str, Enum):
    HF_DIR = "hf_dir"  # a local Hugging Face model directory (config.json + weights)
    GGUF = "gguf"  # a local .gguf file
    HUB = "hub"  # a hub id, passed through to transformers
    ADAPTER = "adapter"  # a LoRA adapter directory (adapter_config.json naming its base model)


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str  # a path for HF_DIR and GGUF, the hub id for HUB
    name: str  # the model name served under by default

    @property
    def path(self) -> Path:
        return Path(self.location)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


def default_model_name(location: str) -> str:
    """`/models/Llama-2-7b-chat-hf/` -> `Llama-2-7b-chat-hf`; `org/name` -> `name`; `x.gguf` -> `x`."""
    name = location.rstrip("/").split("/")[-1]
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def resolve_model_source(model_path: str | None) -> ModelSource:
    """Decide what `model_path` is. Raises ModelPathError naming the path when it is nothing usable."""
    if model_path is None or model_path == "" or (model_path.lower() == BUNDLED_MODEL_NAME
                                                    and not Path(model_path).exists()):
        # the bundled model, by default or by name (what adapters trained on it record as their base)
        return ModelSource(SourceKind.GGUF, str(bundled_gguf_path()), BUNDLED_MODEL_NAME)

    if model_path.lower() in (BUNDLED_EMBEDDING_NAME, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2") \
            and not Path(model_path).exists():
        return ModelSource(SourceKind.HF_DIR, str(bundled_embedding_dir()), BUNDLED_EMBEDDING_NAME)
    path = Path(model_path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelPathError(f"model path {model_path!r} is a file but not a .gguf file")
        return ModelSource(SourceKind.GGUF, str(path.resolve()), default_model_name(path.name))
    if path.is_dir():
        return _resolve_directory(model_path, path)
    looks_like_path = model_path.startswith(("/", "./", "../", "~")) or model_path.count("/") > 1
    if looks_like_path or not _HUB_ID.match(model_path):
        raise ModelPathError(f"model path {model_path!r} does not exist")
    return ModelSource(SourceKind.HUB, model_path, default_model_name(model_path))


def _resolve_directory(model_path: str, path: Path) -> ModelSource:
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return ModelSource(SourceKind.ADAPTER, str(path.resolve()), default_model_name(str(path.resolve())))
    if (path / "config.json").is_file():
        if not any(any(path.glob(p)) for p in _WEIGHT_PATTERNS):
            raise ModelPathError(f"model directory {model_path!r} has a config.json but no weight files")
        return ModelSource(SourceKind.HF_DIR, str(path.resolve()), default_model_name(str(path.resolve())))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(SourceKind.GGUF, str(ggufs[0].resolve()), default_model_name(ggufs[0].name))
    if len(ggufs) > 1:
        raise ModelPathError(f"model directory {model_path!r} holds several .gguf files; name one of them")
    raise ModelPathError(f"model directory {model_path!r} holds no model (no config.json, no .gguf file)")
