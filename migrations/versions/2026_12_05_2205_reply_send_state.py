"""The service's own answers to a patient (a STOP confirmation, HELP, the numbered list)
sent through a provider outside the webhook's response (the WhatsApp Cloud API): where
each send stands, and why it failed

Revision ID: 20261205_reply_send_state
Revises: 20261205_fan_out_costs
Create Date: 2026-12-05 22:05:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_reply_send_state"
down_revision: str | None = "20261205_fan_out_costs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("send_state", sa.String(length=10), nullable=True))
    op.add_column("messages", sa.Column("failure_reason", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_messages_send_state"),
        "messages",
        "send_state IN ('pending', 'sending', 'sent', 'failed')",
    )
    op.create_index(
        op.f("ix_messages_pending_answers"),
        "messages",
        ["updated_at"],
        postgresql_where=sa.text("send_state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_pending_answers"), table_name="messages")
    op.drop_constraint(op.f("ck_messages_send_state"), "messages", type_="check")
    op.drop_column("messages", "failure_reason")
    op.drop_column("messages", "send_state")
