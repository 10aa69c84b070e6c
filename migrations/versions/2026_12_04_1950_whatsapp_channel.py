"""WhatsApp: each template's WhatsApp mapping, and the patients known to have no WhatsApp

Revision ID: 20261204_whatsapp
Revises: 20261204_delivery_reports
Create Date: 2026-12-04 19:50:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_whatsapp"
down_revision: str | None = "20261204_delivery_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "templates",
        sa.Column("whatsapp", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "patients",
        sa.Column("whatsapp_no_account_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("patients", "whatsapp_no_account_at")
    op.drop_column("templates", "whatsapp")
