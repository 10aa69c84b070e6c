"""Dispatch leases: a dead worker's claims are taken over once its lease runs out

Each worker process holds its claimed notifications under a lease it renews
(dispatch_leases); notifications carry the lease they were claimed under. Adding a
nullable column without a default is a catalogue change only, whatever the table's size.

Revision ID: 20261205_dispatch_leases
Revises: 20261205_partitioned_reports
Create Date: 2026-12-05 21:45:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261205_dispatch_leases"
down_revision: str | None = "20261205_partitioned_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_leases",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_leases")),
    )
    op.add_column("notifications", sa.Column("lease_id", postgresql.UUID(), nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "lease_id")
    op.drop_table("dispatch_leases")
