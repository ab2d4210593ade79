"""Each engine contributes its own options, and they are its command-line flags everywhere a model is loaded:
`parley worker`, `parley chat` and `parley serve` (which passes them on to its workers) take every engine's flags
from one list, and a third-party engine adds its own the same way."""

from __future__ import annotations

import argparse

from pydantic import Field

from parley.cli import serve_cmd
from parley.cli.engine_args import (
    add_engine_arguments,
    engine_flags_given,
    engine_options,
)
from parley.engines.base import EngineOptions
from parley.engines.echo import EchoEngine
from parley.engines.engine_options import LlamaCppOptions
from parley.engines.registry import EngineRegistry
from tests.conftest import run_parley


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_parley_serve_takes_every_engines_flags_and_passes_the_given_ones_to_its_workers():
    args = serve_args("--engine", "llamacpp", "--n-ctx", "1024", "--n-threads", "2", "--max-batch-size", "8")
    assert args.engine == "llamacpp"
    assert engine_flags_given(args) == ["--max-batch-size", "8", "--n-ctx", "1024", "--n-threads", "2"]
    args = serve_args("--load-8bit", "--dtype", "bfloat16", "--upstream-model", "m")
    assert engine_flags_given(args) == ["--dtype", "bfloat16", "--load-8bit", "--upstream-model", "m"]
    assert engine_flags_given(serve_args()) == []  # nothing given: the worker's own defaults hold


def test_an_engines_options_are_built_from_its_own_model():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    options = engine_options(parser.parse_args(["--engine", "llamacpp", "--n-ctx", "2048", "--model-name", "x"]),
                             LlamaCppOptions)
    assert options == LlamaCppOptions(n_ctx=2048, model_name="x")


class TinyOptions(EngineOptions):
    beam_width: int = Field(3, ge=1, description="how wide the beam is")
    verbose_tokens: bool = False


class TinyEngine(EchoEngine):
    name = "tiny"
    options_model = TinyOptions


def test_a_third_party_engine_contributes_its_own_flags():
    registry = EngineRegistry.from_entry_points()
    registry.register("tiny", TinyEngine)
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser, registry)
    assert "how wide the beam is" in parser.format_help()
    args = parser.parse_args(["--engine", "tiny", "--beam-width", "5", "--verbose-tokens"])
    assert engine_options(args, registry.options_model("tiny")) == TinyOptions(beam_width=5, verbose_tokens=True)


def test_an_engine_option_out_of_range_is_a_one_line_error():
    result = run_parley("worker", "--engine", "llamacpp", "--n-ctx", "4", "--no-register", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--n-ctx" in result.stderr and "16" in result.stderr and "Traceback" not in result.stderr
