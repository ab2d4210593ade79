"""messages form a tree: edits and regenerated replies are kept as branches

messages.parent_id (the message answered or continued; None for the first), messages.branch (which of the
messages at its depth it is, so that two appenders cannot take one place), messages.shown_child_id (the
version below it last shown), conversations.current_message_id (the last message of the branch shown). Existing conversations become one branch each.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# 0001 left the unique constraint unnamed: SQLite's batch mode names it by this convention to drop it;
# PostgreSQL named it itself.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _old_unique_name() -> str:
    return ("uq_messages_conversation_id_position" if op.get_bind().dialect.name == "sqlite"
            else "messages_conversation_id_position_key")


def upgrade() -> None:
    with op.batch_alter_table("messages", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("branch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("shown_child_id", sa.Integer, nullable=True))
        batch.drop_constraint(_old_unique_name(), type_="unique")
        batch.create_unique_constraint("uq_messages_position_branch", ["conversation_id", "position", "branch"])
        batch.create_foreign_key("fk_messages_parent_id", "messages", ["parent_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_messages_parent_id", ["parent_id"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("current_message_id", sa.Integer, nullable=True))
    op.execute("UPDATE messages SET parent_id = (SELECT earlier.id FROM messages AS earlier WHERE "
               "earlier.conversation_id = messages.conversation_id AND earlier.position = messages.position - 1)")
    op.execute("UPDATE messages SET shown_child_id = (SELECT later.id FROM messages AS later WHERE "
               "later.parent_id = messages.id)")
    op.execute("UPDATE conversations SET current_message_id = (SELECT m.id FROM messages AS m WHERE "
               "m.conversation_id = conversations.id ORDER BY m.position DESC LIMIT 1)")


def downgrade() -> None:
    # Only the branch shown survives a downgrade: the path from each conversation's current message up.
    op.execute("WITH RECURSIVE shown(id, parent_id) AS ("
               "SELECT m.id, m.parent_id FROM messages AS m JOIN conversations AS c ON m.id = c.current_message_id "
               "UNION ALL SELECT m.id, m.parent_id FROM messages AS m JOIN shown ON m.id = shown.parent_id) "
               "DELETE FROM feedback WHERE message_id NOT IN (SELECT id FROM shown)")
    op.execute("WITH RECURSIVE shown(id, parent_id) AS ("
               "SELECT m.id, m.parent_id FROM messages AS m JOIN conversations AS c ON m.id = c.current_message_id "
               "UNION ALL SELECT m.id, m.parent_id FROM messages AS m JOIN shown ON m.id = shown.parent_id) "
               "DELETE FROM messages WHERE id NOT IN (SELECT id FROM shown)")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("current_message_id")
    with op.batch_alter_table("messages", naming_convention=NAMING) as batch:
        batch.drop_index("ix_messages_parent_id")
        batch.drop_constraint("fk_messages_parent_id", type_="foreignkey")
        batch.drop_constraint("uq_messages_position_branch", type_="unique")
        batch.create_unique_constraint(_old_unique_name(), ["conversation_id", "position"])
        batch.drop_column("shown_child_id")
        batch.drop_column("branch")
        batch.drop_column("parent_id")
