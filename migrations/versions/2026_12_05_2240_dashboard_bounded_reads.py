"""The dashboard's webhooks and gateways pages read rollups and indexes, not whole tables

- Webhooks: each endpoint's deliveries by state were counted by grouping the whole of
  `webhook_deliveries` on every request. Statement-level triggers now append one delta
  per changed (endpoint, state) to `webhook_delivery_count_deltas` in the writing
  transaction, as `notification_count_deltas` does for notifications; the workers' fold
  moves them into `webhook_delivery_counts` (app/dashboard/repository.py). The page reads
  one row per endpoint and state plus the unfolded deltas. Backfilled here, under a lock
  that keeps writers out between the triggers' creation and the recount.
- The latest failing deliveries (given up, or owed after a failed try) come from a
  partial index in the page's order: 50 index entries, not a sort of the table.
- Gateways: each phone's attempts by state on the phone were counted with no index on
  `gateway_id` (a scan of `delivery_attempts`); a partial index of the gateway attempts
  only makes it an index-only scan of that phone's own attempts.
- TRUNCATE empties the counts of the table it empties (notifications, webhook
  deliveries): the statement triggers do not see a TRUNCATE, so the counts outlived it.

Revision ID: 20261205_dashboard_bounded_reads
Revises: 20261205_group_moved_history
Create Date: 2026-12-05 01:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_dashboard_bounded_reads"
down_revision: str | None = "20261205_group_moved_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILING = "state = 'failed' OR (state = 'pending' AND attempts > 0)"
ON_A_GATEWAY = "gateway_id IS NOT NULL"


def _count_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("endpoint_name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "webhook_delivery_counts",
        *_count_columns(),
        sa.PrimaryKeyConstraint("endpoint_name", "state", name=op.f("pk_webhook_delivery_counts")),
    )
    op.create_table(
        "webhook_delivery_count_deltas",
        sa.Column("id", sa.BigInteger(), nullable=False),
        *_count_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery_count_deltas")),
    )
    # No writer between the triggers' creation and the recount: each delivery is counted
    # once, by the recount or by a trigger.
    op.execute("LOCK TABLE webhook_deliveries IN SHARE ROW EXCLUSIVE MODE")
    # Rows that left a group -1, rows that joined one +1, summed per group; a claim (a new
    # lease, no change of state) appends nothing.
    op.execute(
        """
        CREATE FUNCTION webhook_delivery_count_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            INSERT INTO webhook_delivery_count_deltas (endpoint_name, state, count)
            SELECT endpoint_name, state, count(*) FROM new_rows GROUP BY 1, 2;
          ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO webhook_delivery_count_deltas (endpoint_name, state, count)
            SELECT endpoint_name, state, -count(*) FROM old_rows GROUP BY 1, 2;
          ELSE
            INSERT INTO webhook_delivery_count_deltas (endpoint_name, state, count)
            SELECT endpoint_name, state, sum(delta) FROM (
              SELECT endpoint_name, state, -1 AS delta FROM old_rows
              UNION ALL
              SELECT endpoint_name, state, 1 AS delta FROM new_rows
            ) AS moves
            GROUP BY 1, 2
            HAVING sum(delta) <> 0;
          END IF;
          RETURN NULL;
        END $$
        """
    )
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"""
            CREATE TRIGGER webhook_delivery_counts_{event.lower()}
            AFTER {event} ON webhook_deliveries REFERENCING {tables}
            FOR EACH STATEMENT EXECUTE FUNCTION webhook_delivery_count_deltas()
            """
        )
    op.execute(
        """
        INSERT INTO webhook_delivery_counts (endpoint_name, state, count)
        SELECT endpoint_name, state, count(*) FROM webhook_deliveries GROUP BY 1, 2
        """
    )
    # A TRUNCATE fires no row or statement trigger of the three kinds above: it empties
    # the counts of what it emptied (no other writer can hold the table meanwhile).
    op.execute(
        """
        CREATE FUNCTION dashboard_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_TABLE_NAME = 'notifications' THEN
            DELETE FROM notification_counts;
            DELETE FROM notification_counts_daily;
            DELETE FROM notification_count_deltas;
          ELSE
            DELETE FROM webhook_delivery_counts;
            DELETE FROM webhook_delivery_count_deltas;
          END IF;
          RETURN NULL;
        END $$
        """
    )
    for table in ("notifications", "webhook_deliveries"):
        op.execute(
            f"""
            CREATE TRIGGER {table}_counts_truncate AFTER TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION dashboard_counts_truncated()
            """
        )
    op.create_index(
        "ix_webhook_deliveries_failing",
        "webhook_deliveries",
        ["updated_at", "id"],
        postgresql_where=sa.text(FAILING),
    )
    op.create_index(
        "ix_delivery_attempts_gateway_states",
        "delivery_attempts",
        ["gateway_id", "gateway_state"],
        postgresql_where=sa.text(ON_A_GATEWAY),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_delivery_attempts_gateway_states",
        table_name="delivery_attempts",
        postgresql_where=sa.text(ON_A_GATEWAY),
    )
    op.drop_index(
        "ix_webhook_deliveries_failing",
        table_name="webhook_deliveries",
        postgresql_where=sa.text(FAILING),
    )
    for table in ("notifications", "webhook_deliveries"):
        op.execute(f"DROP TRIGGER {table}_counts_truncate ON {table}")
    op.execute("DROP FUNCTION dashboard_counts_truncated()")
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER webhook_delivery_counts_{event} ON webhook_deliveries")
    op.execute("DROP FUNCTION webhook_delivery_count_deltas()")
    op.drop_table("webhook_delivery_count_deltas")
    op.drop_table("webhook_delivery_counts")
