"""Idempotency keys scoped per API key (`notifications.api_key_id`), and when each API
key was last used (`api_keys.last_used_at`)

Notifications scheduled before this revision keep a null `api_key_id`: their
idempotency keys match no later request.

Revision ID: 20261204_api_key_scoping
Revises: 20261204_staff_message_template
Create Date: 2026-12-04 20:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_api_key_scoping"
down_revision: str | None = "20261204_staff_message_template"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("notifications", sa.Column("api_key_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_notifications_api_key_id_api_keys"),
        "notifications",
        "api_keys",
        ["api_key_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.drop_constraint("uq_notifications_idempotency_key", "notifications", type_="unique")
    op.create_unique_constraint(
        op.f("uq_notifications_api_key_id"), "notifications", ["api_key_id", "idempotency_key"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_notifications_api_key_id"), "notifications", type_="unique")
    # Two clients may have used one key since: only the oldest keeps it.
    op.execute(
        "UPDATE notifications SET idempotency_key = NULL WHERE id IN ("
        " SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY idempotency_key"
        " ORDER BY created_at, id) AS n FROM notifications"
        " WHERE idempotency_key IS NOT NULL) AS ranked WHERE n > 1)"
    )
    op.create_unique_constraint(
        "uq_notifications_idempotency_key", "notifications", ["idempotency_key"]
    )
    op.drop_constraint(
        op.f("fk_notifications_api_key_id_api_keys"), "notifications", type_="foreignkey"
    )
    op.drop_column("notifications", "api_key_id")
    op.drop_column("api_keys", "last_used_at")
