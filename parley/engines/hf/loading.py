"""Load a model and tokenizer for the transformers engine: device, dtype, 8-bit, multi-GPU."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.cpu_fastpath import pack_output_projection
from parley.errors import ModelLoadError
from parley.models.gguf_cache import ensure_converted
from parley.models.source import ModelSource, SourceKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accelerators:
    """What this machine has; a parameter so that the load plan is testable anywhere."""

    cuda_devices: int = 0
    cuda_bf16: bool = False
    mps: bool = False
    xpu: bool = False

    @classmethod
    def detect(cls) -> Accelerators:
        import torch

        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(
            cuda_devices=cuda,
            cuda_bf16=bool(cuda) and torch.cuda.is_bf16_supported(),
            mps=getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
            xpu=hasattr(torch, "xpu") and torch.xpu.is_available(),
        )


@dataclass
class LoadPlan:
    device: str  # where inputs go ("cpu", "cuda", "mps", "xpu")
    dtype: str
    from_pretrained: dict[str, Any] = field(default_factory=dict)  # besides dtype
    cpu_int8: bool = False  # quantize Linear layers to int8 after loading (CPU path)
    move_to_device: bool = False  # model.to(device) after loading
    onednn_head: bool = False  # CPU fast path for the output projection (see cpu_fastpath.py)


def plan_load(options: TransformersOptions, acc: Accelerators) -> LoadPlan:
    """Map the command-line flags onto `from_pretrained` arguments, or fail with a clear message."""
    device = options.device
    if device == "auto":
        device = "cuda" if acc.cuda_devices else "mps" if acc.mps else "xpu" if acc.xpu else "cpu"
    available = {"cpu": True, "cuda": acc.cuda_devices > 0, "mps": acc.mps, "xpu": acc.xpu}
    if not available[device]:
        raise ModelLoadError(f"--device {device} was asked for but no {device.upper()} device is available")

    dtype = options.dtype
    if dtype == "auto":
        dtype = {"cuda": "bfloat16" if acc.cuda_bf16 else "float16", "mps": "float16", "xpu": "bfloat16"}.get(device, "float32")

    if options.num_gpus > 1 and device != "cuda":
        raise ModelLoadError(f"--num-gpus {options.num_gpus} needs CUDA devices; the device is {device}")
    if options.num_gpus > acc.cuda_devices and device == "cuda":
        raise ModelLoadError(f"--num-gpus {options.num_gpus} but only {acc.cuda_devices} CUDA device(s) are visible")
    if options.cpu_offloading and device != "cuda":
        raise ModelLoadError("--cpu-offloading spills GPU layers to the CPU; it needs --device cuda")
    if options.load_8bit and device not in ("cuda", "cpu"):
        raise ModelLoadError(f"--load-8bit works on cuda (bitsandbytes) and cpu; not on {device}")

    plan = LoadPlan(device=device, dtype=dtype)
    if device == "cuda":
        max_memory: dict[Any, str] | None = None
        if options.max_gpu_memory or options.num_gpus > 1 or options.cpu_offloading:
            per_gpu = options.max_gpu_memory
            max_memory = {i: per_gpu for i in range(options.num_gpus)} if per_gpu else None
            if options.cpu_offloading:
                max_memory = (max_memory or {}) | {"cpu": "1000GiB"}
        plan.from_pretrained["device_map"] = "auto" if (options.num_gpus > 1 or options.cpu_offloading) else {"": 0}
        if max_memory:
            plan.from_pretrained["max_memory"] = max_memory
        if options.load_8bit:
            plan.from_pretrained["quantization_config"] = _bnb_8bit_config(options.cpu_offloading)
    else:
        plan.move_to_device = device != "cpu"
        plan.cpu_int8 = options.load_8bit and device == "cpu"
        if plan.cpu_int8 and dtype != "float32":
            raise ModelLoadError("--load-8bit on the CPU keeps activations in float32; use --dtype auto or float32")
    return plan


def _bnb_8bit_config(cpu_offloading: bool):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError("--load-8bit on CUDA needs bitsandbytes: pip install 'parley[cuda]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=cpu_offloading)


def quantize_linear_int8_cpu(model):
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch).

    PyTorch's own CPU path (fbgemm); measured in README: about half the weight memory for the
    bundled model, with the same greedy answers on the checks in tests/test_transformers_engine.py.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        # in place: a copy would hold float32 and int8 weights at once while loading
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    # What stays float32 (embeddings, norms) still points into the memory-mapped checkpoint,
    # which keeps every page that quantization read resident. Own copies release the mapping.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


def model_directory(source: ModelSource) -> str:
    """The directory or hub id that `from_pretrained` should read (for an adapter: its base model's)."""
    if source.kind is SourceKind.GGUF:
        return str(ensure_converted(source.path))
    if source.kind is SourceKind.ADAPTER:
        return model_directory(adapter_base(source))
    return source.location


def adapter_base(source: ModelSource) -> ModelSource:
    """The base model an adapter directory names in its adapter_config.json."""
    import json

    from parley.models.source import resolve_model_source

    config = json.loads((source.path / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"adapter {source.location!r} does not name its base model (base_model_name_or_path)")
    return resolve_model_source(base)


def load_model_and_tokenizer(source: ModelSource, options: TransformersOptions):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = plan_load(options, Accelerators.detect())
    try:
        where = model_directory(source)
        log.info("loading %s on %s (%s)%s", where, plan.device, plan.dtype, " int8" if plan.cpu_int8 else "")
        has_tokenizer = source.kind is SourceKind.ADAPTER and (source.path / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(source.location if has_tokenizer else where,
                                                  trust_remote_code=options.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=getattr(torch, plan.dtype), trust_remote_code=options.trust_remote_code, **plan.from_pretrained
        )
        if source.kind is SourceKind.ADAPTER:
            from peft import PeftModel

            log.info("applying the LoRA adapter %s", source.location)
            model = PeftModel.from_pretrained(model, source.location).merge_and_unload()  # merged: no per-call cost
    except Exception as exc:  # corrupt files, unreachable hub, unsupported architecture...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load model {source.location!r}: {first_line}") from exc
    model.eval()
    if plan.move_to_device:
        model.to(plan.device)
    if plan.cpu_int8:
        model = quantize_linear_int8_cpu(model)
    elif plan.device == "cpu":
        plan.onednn_head = pack_output_projection(model)
    return model, tokenizer, plan
