"""running parley for a team: account status, OpenID Connect identities and per-user limits; API keys; usage;
the counters behind rate limits

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

USER_LIMITS = ("rpm", "tpm", "token_budget")


def _limit_columns() -> list[sa.Column]:
    return [sa.Column("rpm", sa.Integer, nullable=True), sa.Column("tpm", sa.BigInteger, nullable=True),
            sa.Column("token_budget", sa.BigInteger, nullable=True), sa.Column("budget_period", sa.String(8), nullable=True)]


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("session_version", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("oidc_issuer", sa.String(500), nullable=True))
        batch.add_column(sa.Column("oidc_subject", sa.String(255), nullable=True))
        for column in _limit_columns():
            batch.add_column(column)
        batch.create_unique_constraint("uq_users_oidc_identity", ["oidc_issuer", "oidc_subject"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(24), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        *_limit_columns(),
        sa.Column("models", sa.JSON, nullable=True),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_secret_hash", "api_keys", ["secret_hash"], unique=True)
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )
    for column in ("created_at", "user_id", "key_id"):
        op.create_index(f"ix_usage_{column}", "usage", [column])
    op.create_table(
        "limit_counters",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("bucket", sa.String(32), primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Integer, nullable=False),
    )
    op.create_index("ix_limit_counters_expires_at", "limit_counters", ["expires_at"])


def downgrade() -> None:
    op.drop_table("limit_counters")
    op.drop_table("usage")
    op.drop_table("api_keys")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_oidc_identity", type_="unique")
        for name in ("budget_period", *reversed(USER_LIMITS), "oidc_subject", "oidc_issuer", "last_login_at",
                     "session_version", "status"):
            batch.drop_column(name)
