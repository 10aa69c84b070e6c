"""Imo invitation rounds

Revision ID: 20261123_imo_rounds
Revises: bb53c9f6e458
Create Date: 2026-11-23 12:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261123_imo_rounds"
down_revision: str | None = "bb53c9f6e458"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "imo_invitation_rounds",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("trigger_key", sa.String(length=100), nullable=True),
        sa.Column("invite_limit", sa.Integer(), nullable=True),
        sa.Column("reinvite_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("zones", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("candidates", sa.Integer(), nullable=True),
        sa.Column("handed_out", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "state IN ('running', 'completed')", name=op.f("ck_imo_invitation_rounds_state")
        ),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'api', 'cli', 'bench')",
            name=op.f("ck_imo_invitation_rounds_trigger"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imo_invitation_rounds")),
        sa.UniqueConstraint("trigger_key", name=op.f("uq_imo_invitation_rounds_trigger_key")),
    )
    # Never two rounds at once.
    op.create_index(
        "ix_imo_invitation_rounds_running",
        "imo_invitation_rounds",
        ["state"],
        unique=True,
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "imo_invitation_batches",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("round_id", sa.BigInteger(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("after_id", sa.String(length=64), nullable=False),
        sa.Column("last_id", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claims", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "skip_ids",
            postgresql.ARRAY(sa.String(length=64)),
            server_default=sa.text("'{}'::varchar[]"),
            nullable=False,
        ),
        *(
            sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)
            for name in (
                "invited",
                "subscribed",
                "not_subscribed",
                "no_imo_account",
                "unexpected",
                "transient",
                "denied",
            )
        ),
        *_timestamps(),
        sa.CheckConstraint(
            "state IN ('claimed', 'waiting', 'done')",
            name=op.f("ck_imo_invitation_batches_state"),
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["imo_invitation_rounds.id"],
            name=op.f("fk_imo_invitation_batches_round_id_imo_invitation_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imo_invitation_batches")),
    )
    op.create_index(
        op.f("ix_imo_invitation_batches_round_id"),
        "imo_invitation_batches",
        ["round_id"],
        unique=False,
    )
    op.create_index(
        "ix_imo_invitation_batches_open",
        "imo_invitation_batches",
        ["round_id"],
        unique=False,
        postgresql_where=sa.text("state <> 'done'"),
    )


def downgrade() -> None:
    op.drop_index("ix_imo_invitation_batches_open", table_name="imo_invitation_batches")
    op.drop_index(op.f("ix_imo_invitation_batches_round_id"), table_name="imo_invitation_batches")
    op.drop_table("imo_invitation_batches")
    op.drop_index("ix_imo_invitation_rounds_running", table_name="imo_invitation_rounds")
    op.drop_table("imo_invitation_rounds")
