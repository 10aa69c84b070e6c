"""The email channel: the dispatcher finds a staff message's conversation by its
notification (for the email's subject and Reply-To)

Revision ID: 20261205_email_channel
Revises: 20261205_staff_email
Create Date: 2026-12-05 15:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_email_channel"
down_revision: str | None = "20261205_staff_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_notification",
        "messages",
        ["notification_id"],
        postgresql_where=sa.text("notification_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_notification", table_name="messages")
