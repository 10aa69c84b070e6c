"""Staff as recipients: a notification goes to a patient or to a staff member

- `notifications.staff_id` (FK to staff, deleted with its staff member as a patient's
  are with the patient); `patient_id` becomes nullable, and a CHECK holds that exactly
  one of the two is set. The foreign key and the CHECK are added NOT VALID and validated
  after: the scans of the table then run under SHARE UPDATE EXCLUSIVE, not the lock of
  the ALTER that adds them, so sending goes on while they run.
- `ix_notifications_staff_created` (staff_id, created_at, id), partial: a staff
  member's history (`GET /v1/staff/{id}/messages`) newest first; patient rows, nearly
  all of them, pay no entry.
- `uq_notifications_broadcast_staff`: a broadcast reaches each staff member once, as
  `uq_notifications_broadcast_patient` does each patient.
- `group_staff_members`: the staff members of a static group, beside its patients.
- `broadcast_lanes.staff`: a static group's broadcast has one more lane, over its staff
  members (staff ids, with its own cursor and members), run once every patient lane is
  done.

Revision ID: 20261205_staff_recipients
Revises: 20261205_dashboard_bounded_reads
Create Date: 2026-12-05 22:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_staff_recipients"
down_revision: str | None = "20261205_dashboard_bounded_reads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_RECIPIENT = "(patient_id IS NULL) <> (staff_id IS NULL)"


def upgrade() -> None:
    op.add_column("notifications", sa.Column("staff_id", sa.String(length=64), nullable=True))
    op.alter_column("notifications", "patient_id", existing_type=sa.String(64), nullable=True)
    # Both NOT VALID, then validated: the scans run without blocking writes.
    op.execute(
        "ALTER TABLE notifications ADD CONSTRAINT fk_notifications_staff_id_staff "
        "FOREIGN KEY (staff_id) REFERENCES staff (id) ON DELETE CASCADE NOT VALID"
    )
    op.execute(
        "ALTER TABLE notifications ADD CONSTRAINT ck_notifications_one_recipient "
        f"CHECK ({ONE_RECIPIENT}) NOT VALID"
    )
    op.add_column(
        "broadcast_lanes",
        sa.Column("staff", sa.Boolean(), server_default="false", nullable=False),
    )
    op.create_table(
        "group_staff_members",
        sa.Column("group_name", sa.String(length=100), nullable=False),
        sa.Column("staff_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["groups.name"],
            name=op.f("fk_group_staff_members_group_name_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_group_staff_members_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_name", "staff_id", name=op.f("pk_group_staff_members")),
    )
    op.create_index("ix_group_staff_members_staff", "group_staff_members", ["staff_id"])
    # Out of the migration's transaction, which has committed the ALTERs (and let go of
    # their locks) by then.
    with op.get_context().autocommit_block():
        for constraint in ("fk_notifications_staff_id_staff", "ck_notifications_one_recipient"):
            op.execute(f"ALTER TABLE notifications VALIDATE CONSTRAINT {constraint}")
        op.create_index(
            "ix_notifications_staff_created",
            "notifications",
            ["staff_id", "created_at", "id"],
            postgresql_where=sa.text("staff_id IS NOT NULL"),
            postgresql_concurrently=True,
        )
        op.create_index(
            "uq_notifications_broadcast_staff",
            "notifications",
            ["broadcast_id", "staff_id"],
            unique=True,
            postgresql_where=sa.text("broadcast_id IS NOT NULL AND staff_id IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    # Staff notifications have no patient: they go, so that patient_id can be required.
    op.execute("DELETE FROM notifications WHERE staff_id IS NOT NULL")
    op.drop_index("uq_notifications_broadcast_staff", table_name="notifications")
    op.drop_index("ix_notifications_staff_created", table_name="notifications")
    op.drop_index("ix_group_staff_members_staff", table_name="group_staff_members")
    op.drop_table("group_staff_members")
    op.execute("DELETE FROM broadcast_lanes WHERE staff")
    op.drop_column("broadcast_lanes", "staff")
    op.drop_constraint(op.f("ck_notifications_one_recipient"), "notifications", type_="check")
    op.alter_column("notifications", "patient_id", existing_type=sa.String(64), nullable=False)
    op.drop_constraint(op.f("fk_notifications_staff_id_staff"), "notifications", type_="foreignkey")
    op.drop_column("notifications", "staff_id")
