"""Gateway phones (cht-gateway), and their attempts' state history

Revision ID: 20261204_gateways
Revises: 20261204_events_broadcasts
Create Date: 2026-12-04 21:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_gateways"
down_revision: str | None = "20261204_events_broadcasts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POOL = "channel = 'gateway' AND gateway_state IS NULL AND status = 'sent'"
OFFERED = "gateway_state = 'forwarded-to-gateway'"


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("number", sa.String(length=20), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateways")),
        sa.UniqueConstraint("name", name=op.f("uq_gateways_name")),
    )
    op.add_column("delivery_attempts", sa.Column("gateway_id", sa.BigInteger(), nullable=True))
    op.add_column(
        "delivery_attempts", sa.Column("gateway_state", sa.String(length=30), nullable=True)
    )
    op.add_column(
        "delivery_attempts",
        sa.Column("state_history", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_foreign_key(
        op.f("fk_delivery_attempts_gateway_id_gateways"),
        "delivery_attempts",
        "gateways",
        ["gateway_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_delivery_attempts_gateway_pool",
        "delivery_attempts",
        ["created_at", "id"],
        postgresql_where=sa.text(POOL),
    )
    op.create_index(
        "ix_delivery_attempts_gateway_offered",
        "delivery_attempts",
        ["gateway_id", "created_at", "id"],
        postgresql_where=sa.text(OFFERED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_delivery_attempts_gateway_offered",
        table_name="delivery_attempts",
        postgresql_where=sa.text(OFFERED),
    )
    op.drop_index(
        "ix_delivery_attempts_gateway_pool",
        table_name="delivery_attempts",
        postgresql_where=sa.text(POOL),
    )
    op.drop_constraint(
        op.f("fk_delivery_attempts_gateway_id_gateways"), "delivery_attempts", type_="foreignkey"
    )
    op.drop_column("delivery_attempts", "state_history")
    op.drop_column("delivery_attempts", "gateway_state")
    op.drop_column("delivery_attempts", "gateway_id")
    op.drop_table("gateways")
