"""Cheaper rows for a broadcast's fan-out, and its progress read without counting it

Measured with `notify bench fanout` (docs/benchmarks.md#broadcasts): each notification
inserted paid for index entries and a trigger that most rows do not need.

- `ix_notifications_appointment` and the unique (api_key_id, idempotency_key) held an
  entry for every row, null or not; they become partial (`IS NOT NULL`), which every
  query of them implies (an equality on the column), so the planner still uses them and
  the uniqueness of a client's idempotency key is unchanged.
- The per-row trigger that fills `country` now runs only when the row has none
  (`WHEN (NEW.country IS NULL)`): the fan-out writes the member's country itself.
- `ix_notifications_broadcast_moved`: a broadcast's notifications that left
  `scheduled`. `GET /v1/broadcasts/{id}` counts those (few while it fans out) and
  takes the rest as scheduled, instead of counting every row of the broadcast per poll.

Revision ID: 20261205_fan_out_costs
Revises: 20261205_email_inbound
Create Date: 2026-12-05 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_fan_out_costs"
down_revision: str | None = "20261205_email_inbound"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOVED = "broadcast_id IS NOT NULL AND state <> 'scheduled'"


def upgrade() -> None:
    op.execute("DROP TRIGGER notification_country ON notifications")
    op.execute(
        """
        CREATE TRIGGER notification_country BEFORE INSERT ON notifications
        FOR EACH ROW WHEN (NEW.country IS NULL) EXECUTE FUNCTION notification_country()
        """
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_notifications_appointment_set",
            "notifications",
            ["appointment_id"],
            postgresql_where=sa.text("appointment_id IS NOT NULL"),
            postgresql_concurrently=True,
        )
        op.create_index(
            "uq_notifications_api_key_idempotency",
            "notifications",
            ["api_key_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_notifications_broadcast_moved",
            "notifications",
            ["broadcast_id", "state"],
            postgresql_where=sa.text(MOVED),
            postgresql_concurrently=True,
        )
    op.drop_index("ix_notifications_appointment", table_name="notifications")
    op.drop_constraint("uq_notifications_api_key_id", "notifications", type_="unique")
    op.execute(
        "ALTER INDEX ix_notifications_appointment_set RENAME TO ix_notifications_appointment"
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_broadcast_moved", table_name="notifications")
    op.drop_index("uq_notifications_api_key_idempotency", table_name="notifications")
    op.create_unique_constraint(
        "uq_notifications_api_key_id", "notifications", ["api_key_id", "idempotency_key"]
    )
    op.drop_index("ix_notifications_appointment", table_name="notifications")
    op.create_index("ix_notifications_appointment", "notifications", ["appointment_id"])
    op.execute("DROP TRIGGER notification_country ON notifications")
    op.execute(
        """
        CREATE TRIGGER notification_country BEFORE INSERT ON notifications
        FOR EACH ROW EXECUTE FUNCTION notification_country()
        """
    )
