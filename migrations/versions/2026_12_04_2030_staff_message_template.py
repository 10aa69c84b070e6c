"""The template staff messages to patients travel in: their text, as written

Revision ID: 20261204_staff_message_template
Revises: 20261204_conversations
Create Date: 2026-12-04 20:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_staff_message_template"
down_revision: str | None = "20261204_conversations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One locale is enough: the text is the staff member's, in whatever language they wrote.
TEMPLATE = {
    "key": "conversation.staff_message",
    "locale": "en",
    "title": "Message from your clinic",
    "body": "{text}",
}


def upgrade() -> None:
    op.execute(
        sa.text(
            "INSERT INTO templates (key, locale, title, body) "
            "VALUES (:key, :locale, :title, :body) ON CONFLICT (key, locale) DO NOTHING"
        ).bindparams(**TEMPLATE)
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM templates WHERE key = 'conversation.staff_message'"))
