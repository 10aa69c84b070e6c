from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

BATCH_STATES = ("claimed", "waiting", "done")
# What a round records of each patient it reached: the counters of a batch.
BATCH_COUNTERS = (
    "invited",
    "subscribed",
    "not_subscribed",
    "no_imo_account",
    "unexpected",
    "transient",
    "denied",
    "unconfirmed",
)


class ImoInvitationBatch(TimestampMixin, Base):
    """Patients of one round and one time zone, by keyset range `(after_id, last_id]`.

    A worker holds a `claimed` batch while `lease_until` is ahead; a dead worker's batch
    is taken over once it has passed. The patients still to invite are always re-read
    from the range: whoever got a known answer is no longer a candidate, and
    `skip_ids` names the others this round reached (unexpected and failed answers).
    `sent_through` is written (and committed) before each group of requests leaves: a
    batch taken over from a dead worker invites nobody up to it again, so a crash never
    makes a patient's phone get two invitations in one round (see `unconfirmed`).
    A `waiting` batch met the closing of its zone's messaging window, or Imo failing
    every request; it resumes from `not_before`.
    """

    __tablename__ = "imo_invitation_batches"
    __table_args__ = (
        CheckConstraint(f"state IN {BATCH_STATES}", name="state"),
        Index(
            "ix_imo_invitation_batches_open",
            "round_id",
            postgresql_where=text("state <> 'done'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    round_id: Mapped[int] = mapped_column(
        ForeignKey("imo_invitation_rounds.id", ondelete="CASCADE"), index=True
    )
    time_zone: Mapped[str] = mapped_column(String(64))
    after_id: Mapped[str] = mapped_column(String(64))
    last_id: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    not_before: Mapped[datetime | None]
    # Times the batch was claimed: a takeover after a crash or a wait is one more.
    claims: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # Every patient of the batch up to this id may have been sent a request; NULL once
    # every request sent has its answer written (a batch that is `waiting` or `done`).
    sent_through: Mapped[str | None] = mapped_column(String(64))
    skip_ids: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), server_default=text("'{}'::varchar[]")
    )
    invited: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    subscribed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    not_subscribed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    no_imo_account: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    unexpected: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    transient: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    denied: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Patients whose request may have left when their worker died, answer unknown: not
    # sent again in this round, candidates again in the next.
    unconfirmed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
