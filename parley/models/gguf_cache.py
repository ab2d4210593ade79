"""Convert a GGUF file once into a cached form: a Hugging Face directory (safetensors) for the
transformers engine, or an F16 GGUF for the llama.cpp engine.

transformers dequantizes GGUF on every load (about 30 s for the bundled model here); the
cached directory loads in well under a second. `save_pretrained` refuses a GGUF-loaded
model, so its state dict is copied into a model built from the same config first.

The F16 copy is llama.cpp's own dequantization (`llama_model_quantize` to F16, under a second
for the bundled model): the weights the file holds, computed without quantizing activations.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from parley.errors import ModelLoadError
from parley.paths import cache_dir

log = logging.getLogger(__name__)

_FORMAT_VERSION = "2"  # bump when the conversion below changes (2: no stale GGUF quantization_config)


def _cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    ident = f"{_FORMAT_VERSION}:{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def converted_dir(gguf: Path) -> Path:
    return cache_dir() / "gguf" / f"{gguf.stem}-{_cache_key(gguf)}"


def ensure_converted(gguf: Path) -> Path:
    """Return a Hugging Face directory equivalent to `gguf`, converting it if not yet cached."""
    target = converted_dir(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished it meanwhile
            return target
        log.info("converting %s to a cached safetensors directory (once): %s", gguf.name, target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".converting-") as tmp:
            _convert(gguf, Path(tmp) / "model")
            shutil.move(str(Path(tmp) / "model"), target)
    return target


def f16_copy(gguf: Path, llama_cpp) -> Path:
    """An F16 GGUF with `gguf`'s weights (dequantized once, cached); `llama_cpp` is the imported binding."""
    target = cache_dir() / "gguf" / f"{gguf.stem}-f16-{_cache_key(gguf)}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        log.info("dequantizing %s to an F16 GGUF for llama.cpp (once): %s", gguf.name, target)
        partial = target.with_name(target.name + ".partial")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(str(gguf).encode(), str(partial).encode(), params) != 0:
            partial.unlink(missing_ok=True)
            raise ModelLoadError(f"llama.cpp could not write an F16 copy of {gguf}")
        partial.replace(target)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32: not quantized, trainable
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
