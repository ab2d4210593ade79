"""The store's tables: users, conversations, messages, votes, feedback, assistants, knowledge, API keys, usage
and the counters behind rate limits (SQLAlchemy 2).

The schema is created and changed only by the Alembic migrations in `parley/store/migrations`;
these classes must match them (a test compares the two).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def random_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class EmbeddingVector(TypeDecorator):
    """A chunk's embedding: pgvector's `vector` on PostgreSQL (any dimension: a collection's embedding model sets
    it), float32 bytes on SQLite, which sqlite-vec's distance functions read as they are."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            from pgvector.sqlalchemy import VECTOR

            return dialect.type_descriptor(VECTOR())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        import numpy as np

        vector = np.asarray(value, dtype=np.float32)
        return vector if dialect.name == "postgresql" else vector.tobytes()  # pgvector's own type takes an array

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        import numpy as np

        if isinstance(value, (bytes, memoryview)):  # SQLite
            return np.frombuffer(bytes(value), dtype=np.float32)
        return np.asarray(value, dtype=np.float32)  # pgvector's type gives an array


# The full-text index of the chunks lives outside these classes, made by migration 0005 for each database: an FTS5
# table kept in step by triggers on SQLite, a generated tsvector column with a GIN index on PostgreSQL.
SEARCH_INDEX_TABLES = ("chunks_fts", "chunks_fts_data", "chunks_fts_idx", "chunks_fts_docsize", "chunks_fts_config")
SEARCH_INDEX_COLUMNS = (("chunks", "search"),)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))  # None: the local user (no login)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # active | pending (signed up, awaiting an admin's approval) | disabled (by an admin)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    # Raised when the password changes or the account is disabled: sessions signed in before are void.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The OpenID Connect identity the account signs in with (None: a password account).
    oidc_issuer: Mapped[str | None] = mapped_column(String(500))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    # Limits on the user's use of models, web replies and API keys together (None: no limit).
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    token_budget: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(8))  # day | month
    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_users_oidc_identity"),)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=random_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="New chat")
    current_message_id: Mapped[int | None] = mapped_column(Integer)  # the last message of the branch shown
    model: Mapped[str | None] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(16), default="chat")  # chat | battle | side-by-side
    battle_id: Mapped[str | None] = mapped_column(String(32), index=True)  # an Arena round's sides share it
    side: Mapped[int | None] = mapped_column(Integer)  # 0 for model A, 1 for B...
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # The assistant the conversation is with (its `model` is then the assistant's id); kept when it is deleted.
    assistant_id: Mapped[str | None] = mapped_column(
        ForeignKey("assistants.id", ondelete="SET NULL", name="fk_conversations_assistant_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    messages: Mapped[list[Message]] = relationship(back_populates="conversation", order_by="Message.position",
                                                   cascade="all, delete-orphan", passive_deletes=True)
    assistant: Mapped[Assistant | None] = relationship(lazy="selectin")


class Message(Base):
    __tablename__ = "messages"
    # Messages form a tree: an edited question or a regenerated reply is a sibling of the one it replaces
    # (same parent, same position, another branch), so earlier versions stay reachable.
    __table_args__ = (UniqueConstraint("conversation_id", "position", "branch", name="uq_messages_position_branch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE", name="fk_messages_parent_id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # depth in the tree: 0 for the first message
    branch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # which message at this depth
    shown_child_id: Mapped[int | None] = mapped_column(Integer)  # the version below it last shown
    role: Mapped[str] = mapped_column(String(16))  # system | user | assistant
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    parameters: Mapped[dict | None] = mapped_column(JSON)  # temperature, top_p, max_tokens
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    latency_s: Mapped[float | None] = mapped_column(Float)
    first_token_s: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # stop | length (complete); incomplete (streaming, or cut off by a crash); stopped (by the user); error
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)  # why a reply failed
    sources: Mapped[list | None] = mapped_column(JSON)  # the knowledge a reply was given, numbered as it cites them
    reasoning: Mapped[str | None] = mapped_column(Text)  # a reasoning model's thinking before its answer (content)
    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Vote(Base):
    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # model_a | model_b | tie | tie (bothbad)
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    anony: Mapped[bool] = mapped_column(Boolean, default=True)
    conversation_a_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    conversation_b_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # upvote | downvote | flag
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


assistant_collections = Table(
    "assistant_collections", Base.metadata,
    Column("assistant_id", ForeignKey("assistants.id", ondelete="CASCADE"), primary_key=True),
    Column("collection_id", ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True, index=True),
)


def assistant_id() -> str:
    return "asst_" + uuid.uuid4().hex[:20]


def collection_id() -> str:
    return "kc_" + uuid.uuid4().hex[:20]


class Assistant(Base):
    """A base model with a role: a system prompt, default parameters, starter prompts and knowledge."""

    __tablename__ = "assistants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=assistant_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)  # its owner
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    base_model: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    starters: Mapped[list] = mapped_column(JSON, default=list)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)  # visible to everyone, else to its owner only
    in_battles: Mapped[bool] = mapped_column(Boolean, default=False)  # drawn for anonymous Arena battles
    top_k: Mapped[int] = mapped_column(Integer, default=5)  # chunks retrieved per question
    min_score: Mapped[float] = mapped_column(Float, default=0.25)  # the relevance floor (cosine similarity)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    collections: Mapped[list[Collection]] = relationship(secondary=assistant_collections, order_by="Collection.name")


class Collection(Base):
    """Knowledge: documents split into chunks, each with its embedding by one embedding model."""

    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_collections_user_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=collection_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    embedding_model: Mapped[str] = mapped_column(String(200))  # the served model that embeds its chunks
    dimensions: Mapped[int | None] = mapped_column(Integer)  # known from the first embedding
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    pages: Mapped[int | None] = mapped_column(Integer)  # PDF pages
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Chunk(Base):
    __tablename__ = "chunks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order within the document
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)  # 1-based, where the document has pages
    heading: Mapped[str | None] = mapped_column(String(500))  # the section it is in
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[object | None] = mapped_column(EmbeddingVector)


def api_key_id() -> str:
    return "key_" + uuid.uuid4().hex[:20]


class ApiKey(Base):
    """A user's key to the OpenAI API. Only the SHA-256 of the secret is kept (the secret is shown once)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=api_key_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(24))  # the secret's first characters, to recognise it by
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    token_budget: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(8))  # day | month
    models: Mapped[list | None] = mapped_column(JSON)  # the models and assistants it may use (None: all)
    user: Mapped[User] = relationship(lazy="joined")


class UsageRecord(Base):
    """One request through the API, or one web reply: who, with which key and model, how many tokens, how long."""

    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(8))  # api | web
    endpoint: Mapped[str] = mapped_column(String(64))  # e.g. /v1/chat/completions, or web
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status the client got


class StoredResponse(Base):
    """A response of the API's /v1/responses kept with `store`: what `previous_response_id` continues and `GET
    /v1/responses/{id}` returns, for the user it was made for (None: the API's local user, or a static key)."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    model: Mapped[str] = mapped_column(String(200))
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    input_items: Mapped[list] = mapped_column(JSON)  # the whole conversation it answered, as input items
    response: Mapped[dict] = mapped_column(JSON)  # the response object, as the API returned it


class LimitCounter(Base):
    """Requests and tokens of one scope (a key, a user, a sign-in name or address) in one window of time; the
    rate limits of every API and web process read and add to the same rows."""

    __tablename__ = "limit_counters"
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(32), primary_key=True)  # the window of time, e.g. m29449440
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds when the window ends
