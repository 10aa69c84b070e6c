"""Why an Imo invitation round paused (migration 20261205_imo_round_pauses)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base

# window: no patient left is in an open messaging window; switch: a paused switch
# (`all`, `channel=imo`); errors: Imo failed whole batches, or the shared limiter
# (Redis) could not be reached; rate_limit: Imo answered "too many requests".
PAUSE_REASONS = ("window", "switch", "errors", "rate_limit")


class ImoRoundPause(Base):
    """One spell of a round paused for one reason: recorded again while it lasts only
    by moving `last_seen_at` (and `until`), so a long pause is one row."""

    __tablename__ = "imo_round_pauses"
    __table_args__ = (
        CheckConstraint(f"reason IN {PAUSE_REASONS}", name="reason"),
        Index("ix_imo_round_pauses_round", "round_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    round_id: Mapped[int] = mapped_column(
        ForeignKey("imo_invitation_rounds.id", ondelete="CASCADE")
    )
    reason: Mapped[str] = mapped_column(String(20))
    # The switch's scope, the error's kind: never a patient's data.
    detail: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    # When the round expects to go on (the window's opening, the next look at a switch).
    until: Mapped[datetime | None]
