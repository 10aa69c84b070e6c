from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin
from app.ids import time_ordered_uuid


class WebhookEndpoint(TimestampMixin, Base):
    """Where the clinic system wants to hear of events, and which ones."""

    __tablename__ = "webhook_endpoints"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    # `whsec_...`: signs every delivery (Standard Webhooks). Shown once, at creation.
    secret: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean)
    # The first failure of the current unbroken run of failures; None after a success.
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """The outbox: one row per event, written in the transaction of the change itself."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_occurred", "occurred_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=time_ordered_uuid)
    type: Mapped[str] = mapped_column(String(40))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    occurred_at: Mapped[datetime] = mapped_column(server_default=sql("now()"))


class WebhookDelivery(TimestampMixin, Base):
    """One event owed to one endpoint, until it is delivered or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
        UniqueConstraint("event_id", "endpoint_name"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sql("state = 'pending'"),
        ),
        # A patient's events reach an endpoint in order: one waits while an earlier one
        # of the same patient is still owed there.
        Index(
            "ix_webhook_deliveries_lane",
            "endpoint_name",
            "patient_id",
            "occurred_at",
            "id",
            postgresql_where=sql("state = 'pending'"),
        ),
        # The dashboard's latest failing deliveries (given up, or owed after a failed
        # try), newest first: read backwards, as many entries as it shows.
        Index(
            "ix_webhook_deliveries_failing",
            "updated_at",
            "id",
            postgresql_where=sql("state = 'failed' OR (state = 'pending' AND attempts > 0)"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_name: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.name", ondelete="CASCADE")
    )
    # Copied from the event, for the in-order rule.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, server_default=sql("0"))
    next_attempt_at: Mapped[datetime]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class _DeliveryCountKey:
    endpoint_name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    count: Mapped[int] = mapped_column(BigInteger)


class WebhookDeliveryCount(_DeliveryCountKey, Base):
    """Deliveries per endpoint and state, for the dashboard (migration
    20261205_dashboard_bounded_reads): statement triggers on `webhook_deliveries` append
    deltas in the writing transaction, `fold_notification_counts` folds them in here. An
    endpoint's count is its row here plus its unfolded deltas: exact at every commit."""

    __tablename__ = "webhook_delivery_counts"

    endpoint_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(10), primary_key=True)


class WebhookDeliveryCountDelta(_DeliveryCountKey, Base):
    """Append-only; `count` may be negative (deliveries left the state)."""

    __tablename__ = "webhook_delivery_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
