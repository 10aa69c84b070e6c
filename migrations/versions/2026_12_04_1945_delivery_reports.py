"""The raw log of provider reports (delivery_reports)

Revision ID: 20261204_delivery_reports
Revises: 20261204_default_plan
Create Date: 2026-12-04 19:45:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_delivery_reports"
down_revision: str | None = "20261204_default_plan"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_reports",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("provider_status", sa.Text(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["delivery_attempts.id"],
            name=op.f("fk_delivery_reports_attempt_id_delivery_attempts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_reports")),
    )
    op.create_index(
        "ix_delivery_reports_attempt", "delivery_reports", ["attempt_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_reports_attempt", table_name="delivery_reports")
    op.drop_table("delivery_reports")
