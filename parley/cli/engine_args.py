"""Command-line flags shared by every command that loads a model (chat, worker, serve)."""

from __future__ import annotations

import argparse

from rich.console import Console

from parley.engines.base import Engine, EngineOptions
from parley.engines.registry import EngineRegistry
from parley.models.source import resolve_model_source


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and engine")
    g.add_argument("--model-path", default=None,
                   help="local HF model directory, .gguf file or hub id (default: the bundled SmolLM2-135M-Instruct)")
    g.add_argument("--model-name", default=None, help="name to serve the model under (default: from the path)")
    g.add_argument("--engine", default="transformers", help="inference engine (default: transformers)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps", "xpu"])
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--load-8bit", action="store_true", help="int8 weights (bitsandbytes on CUDA, PyTorch int8 on CPU)")
    g.add_argument("--num-gpus", type=int, default=1, help="spread the weights over this many GPUs")
    g.add_argument("--max-gpu-memory", default=None, help="per-GPU memory budget, e.g. 13GiB")
    g.add_argument("--cpu-offloading", action="store_true", help="spill layers that do not fit on the GPU(s) to the CPU")
    g.add_argument("--max-batch-size", type=int, default=32, help="most sequences decoded together")
    g.add_argument("--trust-remote-code", action="store_true")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        model_name=args.model_name, device=args.device, dtype=args.dtype, load_8bit=args.load_8bit,
        num_gpus=args.num_gpus, max_gpu_memory=args.max_gpu_memory, cpu_offloading=args.cpu_offloading,
        max_batch_size=args.max_batch_size, trust_remote_code=args.trust_remote_code,
    )


def load_engine(args: argparse.Namespace, registry: EngineRegistry | None = None) -> Engine:
    """Resolve the model path (fails fast with a one-line error) and load the engine, with a spinner."""
    registry = registry or EngineRegistry.from_entry_points()
    engine_cls = registry.get(args.engine)
    source = resolve_model_source(args.model_path)
    options = engine_options(args)
    with Console(stderr=True).status(f"loading {source.name} ({args.engine})…"):
        return engine_cls.create(source, options)
