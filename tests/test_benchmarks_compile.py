"""The benchmark scripts are not run by the tests (they take minutes and print tables), but each must at least
compile, so that an edit across the code base cannot leave one broken unseen."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_each_benchmark_compiles(script):
    py_compile.compile(str(script), doraise=True)
