"""Command-line flags shared by every command that loads a model (chat, worker, serve)."""

from __future__ import annotations

import argparse

from rich.console import Console

from parley.engines.base import Engine, EngineOptions
from parley.engines.registry import EngineRegistry
from parley.errors import ParleyError
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
    g = parser.add_argument_group("llamacpp engine")
    g.add_argument("--n-ctx", type=int, default=None,
                   help="KV-cache cells shared by all sequences (default: the model's context, at most 8192)")
    g.add_argument("--n-threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1: all)")
    g = parser.add_argument_group("openai engine (forward to an OpenAI-compatible server)")
    g.add_argument("--upstream-base-url", default=None, help="e.g. http://gpu-box:8000/v1 (vLLM, Ollama, llama-server...)")
    g.add_argument("--upstream-model", default=None, help="the model's name upstream (default: the served name)")
    g.add_argument("--upstream-api-key-file", default=None, metavar="PATH",
                   help="file holding the upstream's API key (default: $PARLEY_UPSTREAM_API_KEY, else $OPENAI_API_KEY "
                        "for api.openai.com and the hosts in $PARLEY_OPENAI_KEY_HOSTS)")
    g.add_argument("--upstream-api-key", default=None, help=argparse.SUPPRESS)  # visible in `ps`: kept for old scripts
    g.add_argument("--api-endpoint-file", default=None,
                   help='JSON: {"served-name": {"api_base": URL, "api_key": KEY, "model_name": NAME}, ...}')


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        model_name=args.model_name, device=args.device, dtype=args.dtype, load_8bit=args.load_8bit,
        num_gpus=args.num_gpus, max_gpu_memory=args.max_gpu_memory, cpu_offloading=args.cpu_offloading,
        max_batch_size=args.max_batch_size, trust_remote_code=args.trust_remote_code,
        n_ctx=args.n_ctx, n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers,
        conv_template=getattr(args, "conv_template", None),
    )


def load_engine(args: argparse.Namespace, registry: EngineRegistry | None = None) -> Engine:
    """Resolve the model path (fails fast with a one-line error) and load the engine, with a spinner."""
    registry = registry or EngineRegistry.from_entry_points()
    engine_cls = registry.get(args.engine)
    if args.engine == "openai":
        return proxy_engine(args)
    source = resolve_model_source(args.model_path)
    options = engine_options(args)
    with Console(stderr=True).status(f"loading {source.name} ({args.engine})…"):
        return engine_cls.create(source, options)


def upstream_api_key(args: argparse.Namespace, base_url: str) -> str | None:
    from parley.cli.secret_args import read_secret
    from parley.openai_env import environment_key_for

    if args.upstream_api_key:
        return args.upstream_api_key
    return (read_secret(args.upstream_api_key_file, "PARLEY_UPSTREAM_API_KEY", "upstream API key")
            or environment_key_for(base_url))


def proxy_engine(args: argparse.Namespace) -> Engine:
    from parley.engines.openai_proxy import (
        OpenAIProxyEngine,
        Upstream,
        load_endpoint_file,
    )

    if args.api_endpoint_file:
        return OpenAIProxyEngine(load_endpoint_file(args.api_endpoint_file))
    if not args.upstream_base_url:
        raise ParleyError("--engine openai needs --upstream-base-url or --api-endpoint-file")
    name = args.model_name or args.upstream_model
    if not name:
        raise ParleyError("--engine openai needs --upstream-model or --model-names")
    upstream = Upstream(api_base=args.upstream_base_url, model_name=args.upstream_model or name,
                        api_key=upstream_api_key(args, args.upstream_base_url))
    return OpenAIProxyEngine({name: upstream})
