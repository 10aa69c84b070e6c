"""Broadcasts' idempotency keys scoped per API key (`broadcasts.api_key_id`), as the
notifications' are since 20261204_api_key_scoping: another client's `Idempotency-Key`
never returns, or refuses, your broadcast.

Broadcasts started before this revision keep a null `api_key_id`: their idempotency keys
match no later request.

Revision ID: 20261206_broadcast_key_scoping
Revises: 20261206_time_ordered_ids
Create Date: 2026-12-06 01:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_broadcast_key_scoping"
down_revision: str | None = "20261206_time_ordered_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("broadcasts", sa.Column("api_key_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_broadcasts_api_key_id_api_keys"),
        "broadcasts",
        "api_keys",
        ["api_key_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.drop_constraint("uq_broadcasts_idempotency_key", "broadcasts", type_="unique")
    op.create_unique_constraint(
        op.f("uq_broadcasts_api_key_id"), "broadcasts", ["api_key_id", "idempotency_key"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_broadcasts_api_key_id"), "broadcasts", type_="unique")
    # Two clients may have used one key since: only the oldest keeps it.
    op.execute(
        "UPDATE broadcasts SET idempotency_key = NULL WHERE id IN ("
        " SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY idempotency_key"
        " ORDER BY created_at, id) AS n FROM broadcasts"
        " WHERE idempotency_key IS NOT NULL) AS ranked WHERE n > 1)"
    )
    op.create_unique_constraint("uq_broadcasts_idempotency_key", "broadcasts", ["idempotency_key"])
    op.drop_constraint(op.f("fk_broadcasts_api_key_id_api_keys"), "broadcasts", type_="foreignkey")
    op.drop_column("broadcasts", "api_key_id")
