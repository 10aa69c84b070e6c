"""A broadcast's fan-out in lanes: disjoint ranges of patient ids, each with its cursor

One chunk statement at a time keeps one PostgreSQL backend busy, and one backend's
ceiling (about 24 µs of CPU per notification) is under the 50,000 notifications a second
a broadcast must reach on 2 cores. The fan-out is now split into lanes (ranges of the
member key, computed once when it first runs and kept here), fanned out at once on
their own connections; each lane commits its cursor and its members with each chunk.
The broadcast's own `cursor` and `members` move into one lane per existing broadcast
(the whole id range), so a fan-out under way when this runs resumes where it was.

Revision ID: 20261205_broadcast_lanes
Revises: 20261205_dispatch_fillfactor
Create Date: 2026-12-05 22:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_broadcast_lanes"
down_revision: str | None = "20261205_dispatch_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broadcast_lanes",
        sa.Column("broadcast_id", sa.UUID(), nullable=False),
        sa.Column("lane", sa.SmallInteger(), nullable=False),
        sa.Column("lower_id", sa.String(length=64), nullable=False),
        sa.Column("upper_id", sa.String(length=64), nullable=True),
        sa.Column("cursor", sa.String(length=64), nullable=False),
        sa.Column("members", sa.Integer(), server_default="0", nullable=False),
        sa.Column("done", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name=op.f("fk_broadcast_lanes_broadcast_id_broadcasts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("broadcast_id", "lane", name=op.f("pk_broadcast_lanes")),
    )
    op.execute(
        """
        INSERT INTO broadcast_lanes (broadcast_id, lane, lower_id, upper_id, cursor, members,
                                     done, updated_at)
        SELECT id, 0, '', NULL, coalesce(cursor, ''), members, state <> 'fanning_out',
               updated_at
        FROM broadcasts
        """
    )
    op.drop_column("broadcasts", "cursor")
    op.drop_column("broadcasts", "members")


def downgrade() -> None:
    op.add_column("broadcasts", sa.Column("cursor", sa.String(length=64), nullable=True))
    op.add_column(
        "broadcasts", sa.Column("members", sa.Integer(), server_default="0", nullable=False)
    )
    # One cursor again: the first unfinished lane's (the lanes are in id order), with the
    # members of the lanes before it; the old fan-out goes on from there through the
    # later lanes (their members already made are kept by the unique pair).
    op.execute(
        """
        UPDATE broadcasts b SET
          cursor = coalesce(
            (SELECT l.cursor FROM broadcast_lanes l
             WHERE l.broadcast_id = b.id AND NOT l.done ORDER BY l.lane LIMIT 1),
            (SELECT l.cursor FROM broadcast_lanes l
             WHERE l.broadcast_id = b.id ORDER BY l.lane DESC LIMIT 1),
            ''),
          members = coalesce(
            (SELECT sum(l.members) FROM broadcast_lanes l
             WHERE l.broadcast_id = b.id AND l.lane <= coalesce(
               (SELECT min(u.lane) FROM broadcast_lanes u
                WHERE u.broadcast_id = b.id AND NOT u.done), 32767)),
            0)
        """
    )
    op.drop_table("broadcast_lanes")
