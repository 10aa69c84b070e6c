"""Inbound email and address deliverability

`inbound_emails`: every email that reached the SMTP receiver or the inbound-parse
webhook, once, with what became of it (attached to a conversation, unmatched, a bounce).
`email_addresses` and `email_address_events`: each address's status (deliverable,
blocked, unknown) and its history.

Revision ID: 20261205_email_inbound
Revises: 20261205_imo_round_pauses
Create Date: 2026-12-05 16:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261205_email_inbound"
down_revision: str | None = "20261205_imo_round_pauses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "inbound_emails",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=20), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("rfc_message_id", sa.Text(), nullable=True),
        sa.Column("sender", sa.String(length=254), nullable=True),
        sa.Column("recipient", sa.String(length=254), nullable=True),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "attachments",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "defects",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("conversation_id", sa.UUID(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "outcome IN ('attached', 'unmatched', 'bounce')", name=op.f("ck_inbound_emails_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_inbound_emails_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_inbound_emails_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_emails")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_inbound_emails_dedup_key")),
    )
    op.create_index(
        "ix_inbound_emails_unmatched",
        "inbound_emails",
        ["received_at", "id"],
        unique=False,
        postgresql_where=sa.text("outcome = 'unmatched'"),
    )
    op.create_table(
        "email_addresses",
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unblocked_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('deliverable', 'blocked', 'unknown')",
            name=op.f("ck_email_addresses_status"),
        ),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_email_addresses")),
    )
    op.create_table(
        "email_address_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.Column("provider_event_id", sa.String(length=100), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["address"],
            ["email_addresses.address"],
            name=op.f("fk_email_address_events_address_email_addresses"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_address_events")),
        sa.UniqueConstraint(
            "provider_event_id", name=op.f("uq_email_address_events_provider_event_id")
        ),
    )
    op.create_index(
        "ix_email_address_events_address",
        "email_address_events",
        ["address", "occurred_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_email_address_events_address", table_name="email_address_events")
    op.drop_table("email_address_events")
    op.drop_table("email_addresses")
    op.drop_index("ix_inbound_emails_unmatched", table_name="inbound_emails")
    op.drop_table("inbound_emails")
