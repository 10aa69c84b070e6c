"""A default reminder plan, so that a fresh installation reminds patients: `default`,
the day before the visit and two days after it when it was missed

Without any default plan, `PUT /v1/appointments/...` scheduled nothing. The plan is an
ordinary row: replace its reminders, or make another plan the default, through
`PUT /v1/reminder-plans/{name}`. It is added only where no plan is the default yet and
the name is free, so an installation that chose its own keeps it.

Revision ID: 20261204_default_plan
Revises: 20261204_list_indexes
Create Date: 2026-12-04 19:30:00+00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261204_default_plan"
down_revision: str | None = "20261204_list_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "default"
# Each goes out at the opening of the patient's messaging window (08:00 local by default)
# on its day. The missed-visit one waits two days, not one, so that a clinic system that
# reports visits in a nightly batch has done so before it goes (a visit clears it).
REMINDERS = [
    {"offset_days": -1, "template": "appointment_reminder.basic"},
    {"offset_days": 2, "template": "missed_visit.basic"},
]


def upgrade() -> None:
    op.execute(
        sa.text(
            "INSERT INTO reminder_plans (name, reminders, is_default) "
            "SELECT :name, CAST(:reminders AS jsonb), true "
            "WHERE NOT EXISTS (SELECT FROM reminder_plans WHERE is_default OR name = :name)"
        ).bindparams(name=NAME, reminders=json.dumps(REMINDERS))
    )


def downgrade() -> None:
    # Only the plan as shipped, and only while no experiment group names it.
    op.execute(
        sa.text(
            "DELETE FROM reminder_plans WHERE name = :name "
            "AND reminders = CAST(:reminders AS jsonb) "
            "AND NOT EXISTS (SELECT FROM experiment_groups WHERE reminder_plan = :name)"
        ).bindparams(name=NAME, reminders=json.dumps(REMINDERS))
    )
