"""Hourly counts of notifications, kept by PostgreSQL triggers (see the migration
20261204_notification_counts): the dashboard reads these, never `notifications`.

Every statement that inserts, updates or deletes notifications appends, in its own
transaction, one delta row per group it changed (the triggers aggregate per statement);
`fold_notification_counts` moves the deltas into `notification_counts` every minute.
The count of a group is its `notification_counts` row plus its unfolded deltas: exact
at every commit, and no two writers ever wait on the same counter row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class _CountKey:
    # The hour the notification was created (scheduled) in, UTC.
    hour: Mapped[datetime]
    # The patient's country when the notification was scheduled.
    country: Mapped[str] = mapped_column(String(2))
    # The channel it is on now ('' before its first dispatch).
    channel: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20))
    # The failure reason of a failed or denied notification, else ''.
    reason: Mapped[str] = mapped_column(String(200))
    # Whether it moved past its first channel.
    fell_back: Mapped[bool] = mapped_column(Boolean)
    count: Mapped[int] = mapped_column(BigInteger)


class NotificationCount(_CountKey, Base):
    __tablename__ = "notification_counts"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(50), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200), primary_key=True)
    fell_back: Mapped[bool] = mapped_column(Boolean, primary_key=True)


class NotificationCountDelta(_CountKey, Base):
    """Append-only; `count` may be negative (a notification left the group)."""

    __tablename__ = "notification_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class NotificationCountDaily(Base):
    """The hourly counts summed per UTC day (migration 20261205_daily_counts): folded from
    the same deltas in the same statement, so a day is always the sum of its hours."""

    __tablename__ = "notification_counts_daily"

    # The UTC day (midnight) the notification was created in.
    day: Mapped[datetime] = mapped_column(primary_key=True)
    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(50), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200), primary_key=True)
    fell_back: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
