"""Imo invitation batches: write-ahead `sent_through` and the `unconfirmed` counter

Revision ID: 20261123_imo_sent_through
Revises: 20261123_experiments
Create Date: 2026-11-23 13:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261123_imo_sent_through"
down_revision: str | None = "20261123_experiments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "imo_invitation_batches", sa.Column("sent_through", sa.String(length=64), nullable=True)
    )
    op.add_column(
        "imo_invitation_batches",
        sa.Column("unconfirmed", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("imo_invitation_batches", "unconfirmed")
    op.drop_column("imo_invitation_batches", "sent_through")
