"""Reconciling lost callbacks: look-ups of `sent` attempts at their provider, and the
index that finds them

Revision ID: 20261204_reconcile
Revises: 20261204_unread_fallback
Create Date: 2026-12-04 21:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_reconcile"
down_revision: str | None = "20261204_unread_fallback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "delivery_attempts",
        sa.Column("reconcile_checks", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "delivery_attempts",
        sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_delivery_attempts_sent",
        "delivery_attempts",
        ["channel", "sent_at"],
        postgresql_where=sa.text("status = 'sent'"),
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_sent", table_name="delivery_attempts")
    op.drop_column("delivery_attempts", "reconciled_at")
    op.drop_column("delivery_attempts", "reconcile_checks")
