"""Why an Imo invitation round paused, and indexes for acceptance over time

`imo_round_pauses`: one row per spell of a round paused for one reason (the messaging
window closed, a paused switch, errors: Imo failing whole batches or the shared limiter
unreachable, Imo's rate limit answers); a spell that goes on is extended, not repeated.
The two indexes let the dashboard count invitations and subscriptions per day without a
scan of `imo_authorizations`.

Revision ID: 20261205_imo_round_pauses
Revises: 20261205_daily_counts
Create Date: 2026-12-05 15:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_imo_round_pauses"
down_revision: str | None = "20261205_daily_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REASONS = "('window', 'switch', 'errors', 'rate_limit')"


def upgrade() -> None:
    op.create_table(
        "imo_round_pauses",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("round_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"reason IN {REASONS}", name=op.f("ck_imo_round_pauses_reason")),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["imo_invitation_rounds.id"],
            name=op.f("fk_imo_round_pauses_round_id_imo_invitation_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imo_round_pauses")),
    )
    op.create_index(
        "ix_imo_round_pauses_round", "imo_round_pauses", ["round_id", "id"], unique=False
    )
    op.create_index(
        "ix_imo_authorizations_last_invited_at",
        "imo_authorizations",
        ["last_invited_at"],
        unique=False,
        postgresql_where=sa.text("last_invited_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_imo_authorizations_last_invited_at", table_name="imo_authorizations")
    op.drop_index("ix_imo_round_pauses_round", table_name="imo_round_pauses")
    op.drop_table("imo_round_pauses")
