"""Staff users (reached by email) and patients' optional email address

Revision ID: 20261205_staff_email
Revises: 20261204_notification_counts
Create Date: 2026-12-05 15:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_staff_email"
down_revision: str | None = "20261204_notification_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("locale", sa.String(length=20), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "split_part(email, '@', 2) = lower(split_part(email, '@', 2))",
            name=op.f("ck_staff_email_domain_lower"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff")),
    )
    op.create_index(op.f("ix_staff_email"), "staff", ["email"])
    op.add_column("patients", sa.Column("email", sa.String(length=254), nullable=True))


def downgrade() -> None:
    op.drop_column("patients", "email")
    op.drop_index(op.f("ix_staff_email"), table_name="staff")
    op.drop_table("staff")
