"""Daily notification counts beside the hourly ones, for the dashboard's long ranges

90 days of hourly counts are ~160,000 rows to sum per request (p95 763-852 ms measured);
the same 90 days per day are ~1,800. The fold that moves the triggers' deltas into
`notification_counts` moves them, in the same statement, into `notification_counts_daily`
too (app/dashboard/repository.py), so a day's row is always the sum of its 24 hours.
Backfilled here from the hourly counts.

Revision ID: 20261205_daily_counts
Revises: 20261205_email_channel
Create Date: 2026-12-05 15:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_daily_counts"
down_revision: str | None = "20261205_email_channel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUP = "country, channel, purpose, state, reason, fell_back"


def upgrade() -> None:
    op.create_table(
        "notification_counts_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("purpose", sa.String(length=50), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("fell_back", sa.Boolean(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day",
            "country",
            "channel",
            "purpose",
            "state",
            "reason",
            "fell_back",
            name=op.f("pk_notification_counts_daily"),
        ),
    )
    op.execute(
        f"""
        INSERT INTO notification_counts_daily (day, {GROUP}, count)
        SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {GROUP},
               sum(count)
        FROM notification_counts GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(count) <> 0
        """  # noqa: S608 - constants only
    )


def downgrade() -> None:
    op.drop_table("notification_counts_daily")
