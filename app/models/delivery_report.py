from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class DeliveryReport(Base):
    """The raw log of provider reports: every status callback on a known attempt, as
    received (fields uncut), and whether it moved the attempt.

    The attempt keeps only what moved it, cut to its columns; a report that did not move
    it (a repeat, a late or contradicting status) is kept here and nowhere else.
    """

    __tablename__ = "delivery_reports"
    # Partitioned by month of received_at (app/retention/partitions.py): the partition
    # key is in the primary key, as PostgreSQL requires; id alone is still unique (one
    # sequence). Expired months are dropped whole after RETENTION_MONTHS.
    __table_args__ = (
        Index("ix_delivery_reports_attempt", "attempt_id", "id"),
        {"postgresql_partition_by": "RANGE (received_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("delivery_attempts.id", ondelete="CASCADE"))
    # The normalised status the report stands for.
    status: Mapped[str] = mapped_column(String(20))
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    provider_status: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    applied: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(primary_key=True, server_default=func.now())
