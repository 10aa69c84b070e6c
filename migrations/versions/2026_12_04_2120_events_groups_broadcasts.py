"""Events and trigger rules, groups and broadcasts; patients' attributes and tags

Revision ID: 20261204_events_broadcasts
Revises: 20261204_webhooks
Create Date: 2026-12-04 21:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_events_broadcasts"
down_revision: str | None = "20261204_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[sa.DateTime]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.add_column(
        "patients",
        sa.Column(
            "attributes", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
    )
    op.add_column(
        "patients",
        sa.Column(
            "tags",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=50), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rule_errors", postgresql.JSONB(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_events_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_table(
        "trigger_rules",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("event_type", sa.String(length=50), nullable=False),
        sa.Column("condition", sa.Text(), nullable=False),
        sa.Column("send_at", postgresql.JSONB(), nullable=False),
        sa.Column("template", sa.String(length=100), nullable=False),
        sa.Column("parameters", postgresql.JSONB(), nullable=False),
        sa.Column("recipient", sa.String(length=20), nullable=False),
        sa.Column("purpose", sa.String(length=50), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_trigger_rules")),
    )
    op.create_index(
        op.f("ix_trigger_rules_event_type"), "trigger_rules", ["event_type"], unique=False
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("filter", postgresql.JSONB(), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_groups")),
    )
    op.create_table(
        "group_members",
        sa.Column("group_name", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["groups.name"],
            name=op.f("fk_group_members_group_name_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_group_members_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_name", "patient_id", name=op.f("pk_group_members")),
    )
    op.create_index("ix_group_members_patient", "group_members", ["patient_id"], unique=False)
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("group_name", sa.String(length=100), nullable=False),
        sa.Column("filter", postgresql.JSONB(), nullable=True),
        sa.Column("template", sa.String(length=100), nullable=False),
        sa.Column("parameters", postgresql.JSONB(), nullable=False),
        sa.Column("purpose", sa.String(length=50), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel_chain", postgresql.ARRAY(sa.String(length=20)), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("cursor", sa.String(length=64), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "state IN ('fanning_out', 'fanned_out', 'cancelled')", name=op.f("ck_broadcasts_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_broadcasts_idempotency_key")),
    )
    op.add_column("notifications", sa.Column("event_id", sa.String(length=64), nullable=True))
    op.add_column("notifications", sa.Column("rule_name", sa.String(length=100), nullable=True))
    op.add_column("notifications", sa.Column("broadcast_id", sa.UUID(), nullable=True))
    op.add_column("notifications", sa.Column("group_name", sa.String(length=100), nullable=True))
    op.create_index(
        "uq_notifications_event_rule",
        "notifications",
        ["event_id", "rule_name"],
        unique=True,
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.create_index(
        "uq_notifications_broadcast_patient",
        "notifications",
        ["broadcast_id", "patient_id"],
        unique=True,
        postgresql_where=sa.text("broadcast_id IS NOT NULL"),
    )
    op.create_index(
        "ix_notifications_group_created",
        "notifications",
        ["group_name", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("group_name IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_group_created", table_name="notifications")
    op.drop_index("uq_notifications_broadcast_patient", table_name="notifications")
    op.drop_index("uq_notifications_event_rule", table_name="notifications")
    op.drop_column("notifications", "group_name")
    op.drop_column("notifications", "broadcast_id")
    op.drop_column("notifications", "rule_name")
    op.drop_column("notifications", "event_id")
    op.drop_table("broadcasts")
    op.drop_index("ix_group_members_patient", table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
    op.drop_index(op.f("ix_trigger_rules_event_type"), table_name="trigger_rules")
    op.drop_table("trigger_rules")
    op.drop_table("events")
    op.drop_column("patients", "tags")
    op.drop_column("patients", "attributes")
