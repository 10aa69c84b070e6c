"""Hourly notification counts for the dashboard, kept by triggers on notifications

Each notification carries its patient's country (filled in on insert, backfilled here).
Statement-level triggers append one aggregated delta per changed group to
notification_count_deltas in the writing transaction; the workers fold the deltas into
notification_counts every minute (app/dashboard/counts.py).

Revision ID: 20261204_notification_counts
Revises: 20261204_operators
Create Date: 2026-12-04 21:31:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_notification_counts"
down_revision: str | None = "20261204_operators"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COLUMNS = "hour, country, channel, purpose, state, reason, fell_back"


def key_of(row: str) -> str:
    """The SQL of the group a notification row counts in (the columns of KEY_COLUMNS).
    tests/dashboard/test_counts.py recounts the table its own way to hold these to it."""
    return f"""
        date_trunc('hour', {row}.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
        coalesce({row}.country, ''),
        coalesce({row}.channel_chain[{row}.channel_index + 1], ''),
        {row}.purpose,
        {row}.state,
        CASE WHEN {row}.state IN ('failed', 'denied')
             THEN left(coalesce({row}.failure_reason, ''), 200) ELSE '' END,
        {row}.channel_index > 0"""


def _count_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("purpose", sa.String(length=50), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("fell_back", sa.Boolean(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.add_column("notifications", sa.Column("country", sa.String(length=2), nullable=True))
    op.execute(
        "UPDATE notifications n SET country = p.country FROM patients p WHERE p.id = n.patient_id"
    )
    op.create_table(
        "notification_counts",
        *_count_columns(),
        sa.PrimaryKeyConstraint(
            "hour",
            "country",
            "channel",
            "purpose",
            "state",
            "reason",
            "fell_back",
            name=op.f("pk_notification_counts"),
        ),
    )
    op.create_table(
        "notification_count_deltas",
        sa.Column("id", sa.BigInteger(), nullable=False),
        *_count_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_count_deltas")),
    )
    op.execute(
        f"""
        INSERT INTO notification_counts ({KEY_COLUMNS}, count)
        SELECT {key_of("n")}, count(*) FROM notifications n GROUP BY 1, 2, 3, 4, 5, 6, 7
        """  # noqa: S608 - constants only
    )
    op.execute(
        """
        CREATE FUNCTION notification_country() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.country IS NULL THEN
            SELECT country INTO NEW.country FROM patients WHERE id = NEW.patient_id;
          END IF;
          RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER notification_country BEFORE INSERT ON notifications
        FOR EACH ROW EXECUTE FUNCTION notification_country()
        """
    )
    # One function for the three events: the rows that left a group count -1, the rows
    # that joined one +1, summed per group; an update that moves no row between groups
    # (a claim's timestamps, a retry count) appends nothing.
    op.execute(
        f"""
        CREATE FUNCTION notification_count_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            INSERT INTO notification_count_deltas ({KEY_COLUMNS}, count)
            SELECT {key_of("n")}, count(*) FROM new_rows n GROUP BY 1, 2, 3, 4, 5, 6, 7;
          ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO notification_count_deltas ({KEY_COLUMNS}, count)
            SELECT {key_of("o")}, -count(*) FROM old_rows o GROUP BY 1, 2, 3, 4, 5, 6, 7;
          ELSE
            INSERT INTO notification_count_deltas ({KEY_COLUMNS}, count)
            SELECT {KEY_COLUMNS}, sum(delta) FROM (
              SELECT {key_of("o")}, -1 AS delta FROM old_rows o
              UNION ALL
              SELECT {key_of("n")}, 1 AS delta FROM new_rows n
            ) AS moves ({KEY_COLUMNS}, delta)
            GROUP BY 1, 2, 3, 4, 5, 6, 7
            HAVING sum(delta) <> 0;
          END IF;
          RETURN NULL;
        END $$
        """  # noqa: S608 - constants only
    )
    op.execute(
        """
        CREATE TRIGGER notification_counts_insert AFTER INSERT ON notifications
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION notification_count_deltas()
        """
    )
    op.execute(
        """
        CREATE TRIGGER notification_counts_update AFTER UPDATE ON notifications
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION notification_count_deltas()
        """
    )
    op.execute(
        """
        CREATE TRIGGER notification_counts_delete AFTER DELETE ON notifications
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION notification_count_deltas()
        """
    )


def downgrade() -> None:
    for trigger in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER notification_counts_{trigger} ON notifications")
    op.execute("DROP FUNCTION notification_count_deltas()")
    op.execute("DROP TRIGGER notification_country ON notifications")
    op.execute("DROP FUNCTION notification_country()")
    op.drop_table("notification_count_deltas")
    op.drop_table("notification_counts")
    op.drop_column("notifications", "country")
