"""delivery_reports partitioned by month of received_at, kept RETENTION_MONTHS

The raw log of provider reports grows by one row per callback and was never purged.
Partitioned by month, an expired month is dropped whole by the daily job
(app/retention/partitions.py), never deleted row by row. The primary key becomes
(id, received_at): PostgreSQL requires the partition key in every unique constraint; id
stays unique on its own, drawn from the same sequence.

Revision ID: 20261205_partitioned_reports
Revises: 20261205_reply_send_state
Create Date: 2026-12-05 22:00:00+00:00
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_partitioned_reports"
down_revision: str | None = "20261205_reply_send_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Months created ahead of the current one (app/retention/partitions.py MONTHS_AHEAD).
MONTHS_AHEAD = 3

_COLUMNS = """
    id bigint NOT NULL DEFAULT nextval('delivery_reports_id_seq'),
    attempt_id bigint NOT NULL,
    status varchar(20) NOT NULL,
    provider_message_id text,
    provider_status text,
    error_code text,
    error_message text,
    applied boolean NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fk_delivery_reports_attempt_id_delivery_attempts FOREIGN KEY (attempt_id)
        REFERENCES delivery_attempts (id) ON DELETE CASCADE
"""


def _month(day: date, shift: int = 0) -> date:
    index = day.year * 12 + day.month - 1 + shift
    return date(index // 12, index % 12 + 1, 1)


def _set_aside_old_table() -> None:
    op.execute("ALTER TABLE delivery_reports RENAME TO delivery_reports_old")
    op.execute("ALTER INDEX pk_delivery_reports RENAME TO pk_delivery_reports_old")
    op.execute("ALTER INDEX ix_delivery_reports_attempt RENAME TO ix_delivery_reports_attempt_old")
    op.execute(
        "ALTER TABLE delivery_reports_old RENAME CONSTRAINT"
        " fk_delivery_reports_attempt_id_delivery_attempts TO fk_delivery_reports_old_attempt"
    )


def _drop_old_table() -> None:
    op.execute("ALTER SEQUENCE delivery_reports_id_seq OWNED BY delivery_reports.id")
    op.execute("DROP TABLE delivery_reports_old")


def upgrade() -> None:
    _set_aside_old_table()
    op.execute(
        f"CREATE TABLE delivery_reports ({_COLUMNS},"
        " CONSTRAINT pk_delivery_reports PRIMARY KEY (id, received_at)"
        ") PARTITION BY RANGE (received_at)"
    )
    op.execute("CREATE TABLE delivery_reports_default PARTITION OF delivery_reports DEFAULT")
    # A partition for every month the old rows span, and for this month and the next ones.
    oldest = op.get_bind().scalar(sa.text("SELECT min(received_at) FROM delivery_reports_old"))
    today = datetime.now(UTC).date()
    month = _month(oldest.astimezone(UTC).date() if oldest else today)
    last = _month(today, MONTHS_AHEAD)
    while month <= last:
        following = _month(month, 1)
        op.execute(
            f"CREATE TABLE delivery_reports_y{month.year:04d}m{month.month:02d}"
            " PARTITION OF delivery_reports"
            f" FOR VALUES FROM ('{month} 00:00:00+00') TO ('{following} 00:00:00+00')"
        )
        month = following
    op.execute("INSERT INTO delivery_reports SELECT * FROM delivery_reports_old")
    op.create_index(
        "ix_delivery_reports_attempt", "delivery_reports", ["attempt_id", "id"], unique=False
    )
    _drop_old_table()


def downgrade() -> None:
    _set_aside_old_table()
    op.execute(
        f"CREATE TABLE delivery_reports ({_COLUMNS},"
        " CONSTRAINT pk_delivery_reports PRIMARY KEY (id))"
    )
    op.execute("INSERT INTO delivery_reports SELECT * FROM delivery_reports_old")
    op.create_index(
        "ix_delivery_reports_attempt", "delivery_reports", ["attempt_id", "id"], unique=False
    )
    # Dropping the partitioned table drops its partitions.
    _drop_old_table()
