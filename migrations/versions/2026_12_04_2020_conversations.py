"""Conversations: topics of exchange with a patient, the messages filed on them, staff
messages and notes, and the per-patient routing row that asks which topic a reply is on

Revision ID: 20261204_conversations
Revises: 20261204_patient_opt_outs
Create Date: 2026-12-04 20:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_conversations"
down_revision: str | None = "20261204_patient_opt_outs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The numbered list a patient gets when a reply could be on several conversations.
TEMPLATES = [
    {
        "key": "conversation.choose",
        "locale": "en",
        "title": "Which topic?",
        "body": "Which topic is your message about? Reply with its number:\n{options}",
    },
    {
        "key": "conversation.choose",
        "locale": "bn-BD",
        "title": "কোন বিষয়?",
        "body": "আপনার বার্তাটি কোন বিষয়ে? নম্বর লিখে উত্তর দিন:\n{options}",
    },
    {
        "key": "conversation.choose",
        "locale": "hi-IN",
        "title": "कौन सा विषय?",
        "body": "आपका संदेश किस विषय के बारे में है? उसका नंबर लिखकर भेजें:\n{options}",
    },
    {"key": "conversation.new_topic", "locale": "en", "title": "New topic", "body": "New topic"},
    {
        "key": "conversation.new_topic",
        "locale": "bn-BD",
        "title": "নতুন বিষয়",
        "body": "নতুন বিষয়",
    },
    {"key": "conversation.new_topic", "locale": "hi-IN", "title": "नया विषय", "body": "नया विषय"},
]


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(length=20), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("state IN ('open', 'closed')", name=op.f("ck_conversations_state")),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_conversations_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    op.create_index(
        "ix_conversations_patient_open",
        "conversations",
        ["patient_id", "last_activity_at"],
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index(
        "ix_conversations_idle",
        "conversations",
        ["last_activity_at"],
        postgresql_where=sa.text("state = 'open'"),
    )
    op.add_column("messages", sa.Column("conversation_id", sa.UUID(), nullable=True))
    op.add_column("messages", sa.Column("notification_id", sa.UUID(), nullable=True))
    op.add_column("messages", sa.Column("audience", sa.String(length=10), nullable=True))
    op.alter_column("messages", "channel", existing_type=sa.String(length=20), nullable=True)
    op.alter_column(
        "messages", "provider_message_id", existing_type=sa.String(length=100), nullable=True
    )
    op.alter_column("messages", "phone_e164", existing_type=sa.String(length=20), nullable=True)
    op.create_foreign_key(
        op.f("fk_messages_conversation_id_conversations"),
        "messages",
        "conversations",
        ["conversation_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_foreign_key(
        op.f("fk_messages_notification_id_notifications"),
        "messages",
        "notifications",
        ["notification_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_messages_conversation", "messages", ["conversation_id", "received_at", "id"]
    )
    op.create_table(
        "conversation_routings",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("pending_message_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("asks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_conversation_routings_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pending_message_id"],
            ["messages.id"],
            name=op.f("fk_conversation_routings_pending_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_conversation_routings")),
    )
    for template in TEMPLATES:
        op.execute(
            sa.text(
                "INSERT INTO templates (key, locale, title, body) "
                "VALUES (:key, :locale, :title, :body) ON CONFLICT (key, locale) DO NOTHING"
            ).bindparams(**template)
        )


def downgrade() -> None:
    op.execute(
        sa.text(
            "DELETE FROM templates WHERE key IN ('conversation.choose', 'conversation.new_topic')"
        )
    )
    op.drop_table("conversation_routings")
    op.drop_index("ix_messages_conversation", table_name="messages")
    op.drop_constraint(
        op.f("fk_messages_notification_id_notifications"), "messages", type_="foreignkey"
    )
    op.drop_constraint(
        op.f("fk_messages_conversation_id_conversations"), "messages", type_="foreignkey"
    )
    # Staff notes have no channel, provider id or number; they cannot outlive this.
    op.execute(sa.text("DELETE FROM messages WHERE direction = 'out'"))
    op.alter_column("messages", "phone_e164", existing_type=sa.String(length=20), nullable=False)
    op.alter_column(
        "messages", "provider_message_id", existing_type=sa.String(length=100), nullable=False
    )
    op.alter_column("messages", "channel", existing_type=sa.String(length=20), nullable=False)
    op.drop_column("messages", "audience")
    op.drop_column("messages", "notification_id")
    op.drop_column("messages", "conversation_id")
    op.drop_index("ix_conversations_idle", table_name="conversations")
    op.drop_index("ix_conversations_patient_open", table_name="conversations")
    op.drop_table("conversations")
