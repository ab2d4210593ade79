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
