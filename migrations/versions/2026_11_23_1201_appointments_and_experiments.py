"""Appointments, reminder plans and experiments

Revision ID: 20261123_experiments
Revises: 20261123_imo_rounds
Create Date: 2026-11-23 12:01:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261123_experiments"
down_revision: str | None = "20261123_imo_rounds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[sa.DateTime]]:
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
        "reminder_plans",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("reminders", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminder_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_reminder_plans_name")),
    )
    # At most one default plan.
    op.create_index(
        "ix_reminder_plans_one_default",
        "reminder_plans",
        ["is_default"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("max_patients_per_day", sa.Integer(), nullable=True),
        sa.Column("countries", postgresql.ARRAY(sa.String(length=2)), nullable=True),
        sa.Column("facility_ids", postgresql.ARRAY(sa.String(length=64)), nullable=True),
        sa.Column("return_window_days", sa.Integer(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("end_date >= start_date", name=op.f("ck_experiments_dates")),
        sa.CheckConstraint(
            "max_patients_per_day IS NULL OR max_patients_per_day > 0",
            name=op.f("ck_experiments_cap"),
        ),
        sa.CheckConstraint("return_window_days >= 0", name=op.f("ck_experiments_return_window")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", name=op.f("uq_experiments_name")),
    )
    op.create_table(
        "experiment_enrolment_days",
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("enrolled", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_enrolment_days_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "day", name=op.f("pk_experiment_enrolment_days")),
    )
    op.create_table(
        "experiment_groups",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("reminder_plan", sa.String(length=100), nullable=True),
        sa.CheckConstraint("weight > 0", name=op.f("ck_experiment_groups_weight")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_groups_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reminder_plan"],
            ["reminder_plans.name"],
            name=op.f("fk_experiment_groups_reminder_plan_reminder_plans"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_groups")),
        sa.UniqueConstraint("experiment_id", "name", name="uq_experiment_groups_experiment_name"),
        sa.UniqueConstraint(
            "experiment_id", "position", name=op.f("uq_experiment_groups_experiment_id")
        ),
    )
    op.create_table(
        "experiment_memberships",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=False),
        sa.Column("appointment_date", sa.Date(), nullable=False),
        sa.Column(
            "enrolled_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("evicted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evicted_reason", sa.String(length=50), nullable=True),
        sa.Column("visited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("visited_on", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_memberships_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["experiment_groups.id"],
            name=op.f("fk_experiment_memberships_group_id_experiment_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_experiment_memberships_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_memberships")),
        sa.UniqueConstraint(
            "experiment_id", "patient_id", name=op.f("uq_experiment_memberships_experiment_id")
        ),
    )
    op.create_index(
        "ix_experiment_memberships_experiment",
        "experiment_memberships",
        ["experiment_id", "id"],
        unique=False,
    )
    # A patient is in at most one running experiment.
    op.create_index(
        "ix_experiment_memberships_one_running",
        "experiment_memberships",
        ["patient_id"],
        unique=True,
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("scheduled_date", sa.Date(), nullable=False),
        sa.Column("facility_id", sa.String(length=64), nullable=True),
        sa.Column("facility_name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reminder_plan", sa.String(length=100), nullable=True),
        sa.Column("membership_id", sa.BigInteger(), nullable=True),
        sa.Column("visited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("visited_on", sa.Date(), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('scheduled', 'visited', 'cancelled')", name=op.f("ck_appointments_status")
        ),
        sa.ForeignKeyConstraint(
            ["membership_id"],
            ["experiment_memberships.id"],
            name=op.f("fk_appointments_membership_id_experiment_memberships"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_appointments_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
    )
    op.create_index(
        op.f("ix_appointments_membership_id"), "appointments", ["membership_id"], unique=False
    )
    op.create_index(
        op.f("ix_appointments_patient_id"), "appointments", ["patient_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_appointments_patient_id"), table_name="appointments")
    op.drop_index(op.f("ix_appointments_membership_id"), table_name="appointments")
    op.drop_table("appointments")
    op.drop_index(
        "ix_experiment_memberships_one_running",
        table_name="experiment_memberships",
        postgresql_where=sa.text("active"),
    )
    op.drop_index("ix_experiment_memberships_experiment", table_name="experiment_memberships")
    op.drop_table("experiment_memberships")
    op.drop_table("experiment_groups")
    op.drop_table("experiment_enrolment_days")
    op.drop_table("experiments")
    op.drop_index(
        "ix_reminder_plans_one_default",
        table_name="reminder_plans",
        postgresql_where=sa.text("is_default"),
    )
    op.drop_table("reminder_plans")
