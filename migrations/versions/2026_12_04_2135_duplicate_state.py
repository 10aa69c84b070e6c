"""Notifications: the loop guard's `duplicate` state

Revision ID: 20261204_duplicate_state
Revises: 20261204_gateways
Create Date: 2026-12-04 21:25:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261204_duplicate_state"
down_revision: str | None = "20261204_gateways"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = (
    "'scheduled', 'sending', 'sent', 'delivered', 'read', 'failed', 'denied', 'cleared', "
    "'muted', 'expired'"
)
AFTER = (
    "'scheduled', 'sending', 'sent', 'delivered', 'read', 'failed', 'denied', 'duplicate', "
    "'cleared', 'muted', 'expired'"
)


def _check(states: str) -> None:
    op.drop_constraint(op.f("ck_notifications_state"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_state"), "notifications", f"state IN ({states})"
    )


def upgrade() -> None:
    _check(AFTER)


def downgrade() -> None:
    # A duplicate was never sent: it reads as denied to the schema before this one.
    op.execute("UPDATE notifications SET state = 'denied' WHERE state = 'duplicate'")
    _check(BEFORE)
