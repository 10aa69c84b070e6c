"""Imo invitation batches: write-ahead `sent_through`, the `unconfirmed` counter, and
the invitable patients' index by time zone then id

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


_INVITABLE = sa.text("reminder_consent = 'granted' AND mobile_e164 IS NOT NULL")


def upgrade() -> None:
    # A round scans one zone at a time by keyset: with the zone first, a zone's scan
    # no longer walks the entries of every other zone.
    op.drop_index("ix_patients_invitable", table_name="patients")
    op.create_index(
        "ix_patients_invitable", "patients", ["time_zone", "id"], postgresql_where=_INVITABLE
    )
    op.add_column(
        "imo_invitation_batches", sa.Column("sent_through", sa.String(length=64), nullable=True)
    )
    op.add_column(
        "imo_invitation_batches",
        sa.Column("unconfirmed", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_patients_invitable", table_name="patients")
    op.create_index("ix_patients_invitable", "patients", ["id"], postgresql_where=_INVITABLE)
    op.drop_column("imo_invitation_batches", "unconfirmed")
    op.drop_column("imo_invitation_batches", "sent_through")
