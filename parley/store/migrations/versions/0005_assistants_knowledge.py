"""assistants and knowledge: assistants, collections, documents, chunks with embeddings and a full-text index;
conversations.assistant_id, messages.sources

Revision ID: 0005
Revises: 0004

Vectors: pgvector's `vector` on PostgreSQL (the extension is created here), float32 bytes on SQLite (read by
sqlite-vec). Full text: an FTS5 table over the chunks kept in step by triggers on SQLite; a generated tsvector
column with a GIN index on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from parley.store.models import EmbeddingVector

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SQLITE_SEARCH = [
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, content='chunks', content_rowid='id', "
    "tokenize='porter unicode61')",
    "CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN "
    "INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, coalesce(new.heading, ''), new.text); END",
    "CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, coalesce(old.heading, ''), "
    "old.text); END",
    "CREATE TRIGGER chunks_fts_update AFTER UPDATE OF heading, text ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, coalesce(old.heading, ''), "
    "old.text); INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, coalesce(new.heading, ''), new.text); END",
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "assistants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=False),
        sa.Column("temperature", sa.Float, nullable=True),
        sa.Column("top_p", sa.Float, nullable=True),
        sa.Column("max_tokens", sa.Integer, nullable=True),
        sa.Column("starters", sa.JSON, nullable=False),
        sa.Column("shared", sa.Boolean, nullable=False),
        sa.Column("in_battles", sa.Boolean, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("min_score", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_assistants_user_id", "assistants", ["user_id"])
    op.create_table(
        "collections",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("shared", sa.Boolean, nullable=False),
        sa.Column("embedding_model", sa.String(200), nullable=False),
        sa.Column("dimensions", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "name", name="uq_collections_user_name"),
    )
    op.create_index("ix_collections_user_id", "collections", ["user_id"])
    op.create_table(
        "assistant_collections",
        sa.Column("assistant_id", sa.String(32), sa.ForeignKey("assistants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("collection_id", sa.String(32), sa.ForeignKey("collections.id", ondelete="CASCADE"),
                  primary_key=True),
    )
    op.create_index("ix_assistant_collections_collection_id", "assistant_collections", ["collection_id"])
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("collection_id", sa.String(32), sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("pages", sa.Integer, nullable=True),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_documents_collection_id", "documents", ["collection_id"])
    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("collection_id", sa.String(32), sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("page", sa.Integer, nullable=True),
        sa.Column("heading", sa.String(500), nullable=True),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("embedding", EmbeddingVector(), nullable=True),
    )
    op.create_index("ix_chunks_document_id", "chunks", ["document_id"])
    op.create_index("ix_chunks_collection_id", "chunks", ["collection_id"])
    if postgres:
        op.execute("ALTER TABLE chunks ADD COLUMN search tsvector GENERATED ALWAYS AS "
                   "(to_tsvector('english', coalesce(heading, '') || ' ' || text)) STORED")
        op.execute("CREATE INDEX ix_chunks_search ON chunks USING gin (search)")
    else:
        for statement in SQLITE_SEARCH:
            op.execute(statement)
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("assistant_id", sa.String(32), nullable=True))
        batch.create_index("ix_conversations_assistant_id", ["assistant_id"])
        batch.create_foreign_key("fk_conversations_assistant_id", "assistants", ["assistant_id"], ["id"],
                                 ondelete="SET NULL")
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("sources", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("sources")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_constraint("fk_conversations_assistant_id", type_="foreignkey")
        batch.drop_index("ix_conversations_assistant_id")
        batch.drop_column("assistant_id")
    if op.get_bind().dialect.name != "postgresql":
        for trigger in ("chunks_fts_insert", "chunks_fts_delete", "chunks_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
    for table in ("chunks", "documents", "assistant_collections", "collections", "assistants"):
        op.drop_table(table)
