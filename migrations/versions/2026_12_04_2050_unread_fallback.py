"""Unread fallback: when a reminder was handed on unread, and the index that finds the
candidates

Revision ID: 20261204_unread_fallback
Revises: 20261204_switches
Create Date: 2026-12-04 20:50:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_unread_fallback"
down_revision: str | None = "20261204_switches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notifications",
        sa.Column("unread_fallback_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["expires_at"],
        postgresql_where=sa.text(
            "state IN ('delivered', 'sent') AND unread_fallback_at IS NULL"
            " AND channel_chain[channel_index + 1] IN ('imo', 'whatsapp')"
        ),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_unread", table_name="notifications")
    op.drop_column("notifications", "unread_fallback_at")
