"""Command-line flags of every command that loads a model (chat, worker, serve): the general ones, and each
engine's own, made from its options model (parley.engines.engine_options)."""

from __future__ import annotations

import argparse
import importlib.util
import types
import typing
from typing import Literal

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from rich.console import Console

from parley.engines.base import Engine, EngineOptions
from parley.engines.registry import EngineRegistry
from parley.errors import ParleyError
from parley.models.source import ModelSource, SourceKind, resolve_model_source

COMMON = frozenset({"model_name", "conv_template"})  # set by the command itself (--model-name, --conv-template)


def _flag_kwargs(field: FieldInfo, default) -> dict:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kwargs: dict = {"default": default, "help": argparse.SUPPRESS if extra.get("hidden") else field.description}
    if "metavar" in extra:
        kwargs["metavar"] = extra["metavar"]
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return kwargs | {"action": "store_true"}
    if typing.get_origin(annotation) is Literal:
        return kwargs | {"choices": list(typing.get_args(annotation))}
    return kwargs | {"type": annotation}


AUTO = "auto"


def chosen_engine(name: str, source: ModelSource | None) -> str:
    """The engine `--engine auto` means for this model: llama.cpp for a GGUF file (the bundled model is one)
    when llama-cpp-python is installed, else transformers. Chosen by measurement (benchmarks/vs_fastchat.py,
    README): on the bundled model llama.cpp (F16) served 3.4x transformers' tokens/s for one stream and 1.4x
    for sixteen (63.8 against 18.6, 175.5 against 126.6; AMD EPYC)."""
    if name != AUTO:
        return name
    if source is not None and source.kind == SourceKind.GGUF and importlib.util.find_spec("llama_cpp") is not None:
        return "llamacpp"
    return "transformers"


def _in_order(registry: EngineRegistry) -> list[str]:
    return sorted(registry.names(), key=lambda n: (n != "transformers", n))  # the default engine's flags first


def add_engine_arguments(parser: argparse.ArgumentParser, registry: EngineRegistry | None = None,
                         only_given: bool = False, model_flags: bool = True) -> None:
    """`only_given`: flags that are not given stay out of the namespace (what `parley serve` passes on);
    `model_flags`: also --model-path and --model-name."""
    registry = registry or EngineRegistry.from_entry_points()
    g = parser.add_argument_group("model and engine")
    if model_flags:
        g.add_argument("--model-path", default=None,
                       help="local HF model directory, .gguf file or hub id (default: the bundled SmolLM2-135M-Instruct)")
        g.add_argument("--model-name", default=None, help="name to serve the model under (default: from the path)")
    g.add_argument("--engine", default=AUTO,
                   help=f"inference engine: {', '.join(registry.names())}, or auto (the default): llamacpp for a "
                        "GGUF file when llama-cpp-python is installed, else transformers")
    seen: set[str] = set()
    for name in _in_order(registry):
        fields = {f: info for f, info in registry.options_model(name).model_fields.items()
                  if f not in COMMON and f not in seen}
        if not fields:
            continue
        group = parser.add_argument_group(f"{name} engine")
        for field, info in fields.items():
            seen.add(field)
            default = argparse.SUPPRESS if only_given else info.get_default(call_default_factory=True)
            group.add_argument("--" + field.replace("_", "-"), dest=field, **_flag_kwargs(info, default))


def engine_flags_given(args: argparse.Namespace, registry: EngineRegistry | None = None) -> list[str]:
    """The engine flags given on this command line (parsed with `only_given`), as a worker's argv."""
    registry = registry or EngineRegistry.from_entry_points()
    out, seen = [], set()
    for name in _in_order(registry):
        for field, info in registry.options_model(name).model_fields.items():
            if field in COMMON or field in seen or not hasattr(args, field):
                continue
            seen.add(field)
            value = getattr(args, field)
            flag = "--" + field.replace("_", "-")
            if info.annotation is bool:
                out += [flag] if value else []
            elif value is not None:
                out += [flag, str(value)]
    return out


def engine_options(args: argparse.Namespace, options_model: type[EngineOptions] = EngineOptions) -> EngineOptions:
    given = {f: getattr(args, f) for f in options_model.model_fields if f not in COMMON and hasattr(args, f)}
    try:
        return options_model(model_name=args.model_name, conv_template=getattr(args, "conv_template", None), **given)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "the engine options"
        raise ParleyError(f"{flag}: {err['msg']}") from None


def load_engine(args: argparse.Namespace, registry: EngineRegistry | None = None) -> Engine:
    """Resolve the model path (fails fast with a one-line error) and load the engine, with a spinner."""
    registry = registry or EngineRegistry.from_entry_points()
    source = resolve_model_source(args.model_path) if args.engine == AUTO else None
    name = chosen_engine(args.engine, source)
    engine_cls = registry.get(name)
    options = engine_options(args, registry.options_model(name))
    if not engine_cls.takes_model_path:
        return registry.create(name, None, options)
    source = source or resolve_model_source(args.model_path)
    with Console(stderr=True).status(f"loading {source.name} ({name})…"):
        return registry.create(name, source, options)
