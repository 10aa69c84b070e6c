"""A group's history filtered by a state other than `scheduled`: an index range read

`GET /v1/groups/{name}/messages?state=failed` walked the group's index
(group_name, created_at, id) until it had a page: 1,543 ms p50 for 2% failed in a
900,000-message group (docs/benchmarks.md#history). This index makes it a range read
like the other pages. It is partial: a row enters it only once it leaves `scheduled`,
so a broadcast's fan-out (a million inserts, all `scheduled`) pays nothing for it; each
later move of a group's row (non-HOT already: `state` is indexed) writes one more entry.

Revision ID: 20261205_group_moved_history
Revises: 20261205_broadcast_lanes
Create Date: 2026-12-05 22:35:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_group_moved_history"
down_revision: str | None = "20261205_broadcast_lanes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Concurrently: the table is big and written to all the time.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_notifications_group_moved",
            "notifications",
            ["group_name", "state", "created_at", "id"],
            postgresql_where=sa.text("group_name IS NOT NULL AND state <> 'scheduled'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_notifications_group_moved",
            table_name="notifications",
            postgresql_concurrently=True,
        )
