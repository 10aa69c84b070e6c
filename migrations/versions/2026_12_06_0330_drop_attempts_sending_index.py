"""Drop `ix_delivery_attempts_sending`: no statement reads it (the sweeper finds a dead
worker's attempts through their notifications, by `ix_delivery_attempts_notification`),
and every attempt paid an entry in it when inserted: 65 of the 2,500 bytes of WAL a
notification sent cost (docs/benchmarks.md, "Where a notification's WAL goes").

Revision ID: 20261206_drop_attempts_sending
Revises: 20261206_broadcast_key_scoping
Create Date: 2026-12-06 03:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_drop_attempts_sending"
down_revision: str | None = "20261206_broadcast_key_scoping"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(
        "ix_delivery_attempts_sending",
        table_name="delivery_attempts",
        postgresql_where=sa.text("status = 'sending'"),
    )


def downgrade() -> None:
    op.create_index(
        "ix_delivery_attempts_sending",
        "delivery_attempts",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'sending'"),
    )
