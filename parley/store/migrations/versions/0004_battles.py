"""conversations.battle_id and side: the conversations of one Arena round (one per side) belong together

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("battle_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("side", sa.Integer, nullable=True))
        batch.create_index("ix_conversations_battle_id", ["battle_id"])


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_battle_id")
        batch.drop_column("side")
        batch.drop_column("battle_id")
