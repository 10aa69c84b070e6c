from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

ROUND_STATES = ("running", "completed")
ROUND_TRIGGERS = ("schedule", "api", "cli", "bench")


class ImoInvitationRound(TimestampMixin, Base):
    """One pass of Imo invitations over every candidate patient; at most one runs at once.

    Workers take its work in batches (`ImoInvitationBatch`); the round keeps, per time
    zone, the keyset cursor up to which patients have been handed out. `zones` is NULL
    until the round is planned (its candidates counted).
    """

    __tablename__ = "imo_invitation_rounds"
    __table_args__ = (
        CheckConstraint(f"state IN {ROUND_STATES}", name="state"),
        CheckConstraint(f"trigger IN {ROUND_TRIGGERS}", name="trigger"),
        # Never two rounds at once: a second `running` row is a unique violation.
        Index(
            "ix_imo_invitation_rounds_running",
            "state",
            unique=True,
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(20))
    # Makes a start idempotent (the daily schedule: "schedule:2026-11-23").
    trigger_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    # At most this many patients are handed out; NULL: all candidates.
    invite_limit: Mapped[int | None] = mapped_column(Integer)
    # Patients not subscribed and last invited before this moment are re-invited.
    reinvite_before: Mapped[datetime]
    # {time_zone: {"after": last patient id handed out, "exhausted": bool}}.
    zones: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    candidates: Mapped[int | None] = mapped_column(Integer)
    handed_out: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Set while no patient left can be invited before this moment (messaging window).
    paused_until: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
