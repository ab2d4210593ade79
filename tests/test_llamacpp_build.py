"""The llama.cpp that parley runs is built to run on any x86-64 CPU: no AMX path (it crashes on Intel CPUs with AMX,
llama.cpp #20824) and no instructions beyond AVX2 (a wheel built for one machine's CPU can crash on another's),
and it answers on this CPU."""

from __future__ import annotations

import platform

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from parley.engines.llamacpp import has_amx_path  # noqa: E402
from tests.conftest import run_parley  # noqa: E402


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode()


def test_the_build_has_no_amx_path_and_is_not_tuned_to_one_cpu():
    info = system_info()
    assert not has_amx_path(info), info
    if platform.machine() in ("x86_64", "AMD64"):
        assert "AVX2 = 1" in info and "FMA = 1" in info, info  # the portable baseline keeps the fast kernels
        assert "AVX512" not in info and "AVX_VNNI" not in info, info  # nothing a CPU of the baseline may lack


def test_an_amx_build_is_recognized():
    assert has_amx_path("CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    assert not has_amx_path("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |")


def test_the_llamacpp_engine_answers_on_this_cpu():
    done = run_parley("chat", "--engine", "llamacpp", "--style", "programmatic", "--temperature", "0",
                      "--max-new-tokens", "24", stdin="What is 2 plus 2?\n", timeout=300)
    assert done.returncode == 0, done.stderr  # a crash in the matrix multiply is signal 11 here
    assert "4" in done.stdout
