"""Commands that need no model run on a host without torch or transformers (a gateway machine): they
never import them. Shown by shadowing both packages with ones that fail on import."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_parley
from tests.servers import Server


@pytest.fixture
def no_torch(tmp_path) -> dict:
    for name in ("torch", "transformers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this host')\n")
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("command", ["db", "controller", "api", "web", "serve", "chat", "bench", "eval", "worker"])
def test_every_commands_help_needs_neither(no_torch, command):
    result = run_parley(command, "--help", env=no_torch, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_database_commands_need_neither(no_torch, tmp_path):
    result = run_parley("db", "upgrade", "--db-url", f"sqlite:///{tmp_path / 'p.db'}", env=no_torch, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_controller_and_an_api_serve_without_them(no_torch):
    controller = Server("controller", env=no_torch)
    api = None
    try:
        controller.wait_until(lambda: httpx.get(controller.url + "/health", timeout=1).status_code == 200, "up", 60)
        api = Server("api", "--controller-address", controller.url, env=no_torch)
        api.wait_until(lambda: httpx.get(api.url + "/health", timeout=1).status_code == 200, "up", 60)
        assert httpx.get(api.url + "/v1/models", timeout=5).json() == {"object": "list", "data": []}
    finally:
        for server in (api, controller):
            if server is not None:
                server.stop()


def test_a_local_engine_without_torch_is_a_one_line_error_naming_the_extra_and_llamacpp_still_answers(tmp_path):
    """On a host without torch, the transformers engine says what to install; the llama.cpp engine, whose
    sampler is numpy, answers."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    refused = run_parley("worker", "--engine", "transformers", "--port", "0", env=env, timeout=60)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "the transformers engine needs torch, which is not installed here; install parley[local] (or the package torch)")
    pytest.importorskip("llama_cpp")
    answered = run_parley("chat", "--engine", "llamacpp", "--style", "programmatic", "--temperature", "0",
                          stdin="What is 2 plus 2?\n", env=env, timeout=120)
    assert answered.returncode == 0, answered.stderr
    assert "4" in answered.stdout
