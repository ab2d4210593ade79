"""Alembic's environment: run by `parley.store.database.Database.upgrade()` with the connection it gives."""

from __future__ import annotations

from alembic import context

from parley.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
