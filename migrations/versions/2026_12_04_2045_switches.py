"""Switches: paused scopes of sending, and the notifications a pause holds

Revision ID: 20261204_switches
Revises: 20261204_api_key_scoping
Create Date: 2026-12-04 20:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_switches"
down_revision: str | None = "20261204_api_key_scoping"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "switches",
        sa.Column("scope", sa.String(length=120), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=True),
        sa.Column("purpose", sa.String(length=50), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_switches")),
    )
    op.add_column("notifications", sa.Column("paused_by", sa.String(length=120), nullable=True))
    op.create_index(
        "ix_notifications_paused_by",
        "notifications",
        ["paused_by"],
        postgresql_where=sa.text("paused_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_paused_by", table_name="notifications")
    op.drop_column("notifications", "paused_by")
    op.drop_table("switches")
