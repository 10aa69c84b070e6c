from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin
from app.ids import time_ordered_uuid
from app.states import (
    EVENT_SOURCES,
    READ_RECEIPT_CHANNELS,
    STORED_STATES,
    AttemptStatus,
    NotificationEvent,
    sql_in,
)

# Reminders the unread fallback may hand on: accepted on a channel with read receipts,
# not read, not handed on before. (PostgreSQL arrays count from 1.)
UNREAD_CANDIDATES = (
    f"{sql_in('state', EVENT_SOURCES[NotificationEvent.UNREAD_FALLBACK])}"
    " AND unread_fallback_at IS NULL"
    f" AND {sql_in('channel_chain[channel_index + 1]', READ_RECEIPT_CHANNELS)}"
)


class Notification(TimestampMixin, Base):
    """One message to one patient or one staff member, from scheduling to its final
    state."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(f"state IN {STORED_STATES}", name="state"),
        # To a patient or to a staff member (by email), never both, never neither.
        CheckConstraint("(patient_id IS NULL) <> (staff_id IS NULL)", name="one_recipient"),
        # Idempotency keys are the client's own: scoped by the API key that sent them.
        # Partial, as is every index most rows would hold only a null in: each index
        # entry is paid by every insert, a broadcast's million included.
        Index(
            "uq_notifications_api_key_idempotency",
            "api_key_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The dispatcher's claim: due scheduled rows in due order.
        Index("ix_notifications_due", "due_at", postgresql_where=text("state = 'scheduled'")),
        # The sweeper: rows a dead worker left in `sending`.
        Index("ix_notifications_sending", "claimed_at", postgresql_where=text("state = 'sending'")),
        Index("ix_notifications_patient_created", "patient_id", "created_at", "id"),
        # GET /v1/staff/{id}/messages: newest first. Partial: patient rows pay no entry.
        Index(
            "ix_notifications_staff_created",
            "staff_id",
            "created_at",
            "id",
            postgresql_where=text("staff_id IS NOT NULL"),
        ),
        # GET /v1/notifications: newest first, of every state or of one.
        Index("ix_notifications_created", "created_at", "id"),
        Index("ix_notifications_state_created", "state", "created_at", "id"),
        Index(
            "ix_notifications_appointment",
            "appointment_id",
            postgresql_where=text("appointment_id IS NOT NULL"),
        ),
        # One message per (event, rule), upserted; also the event's history (a few rows).
        Index(
            "uq_notifications_event_rule",
            "event_id",
            "rule_name",
            unique=True,
            postgresql_where=text("event_id IS NOT NULL"),
        ),
        # A broadcast reaches each member once, however often its fan-out resumes.
        Index(
            "uq_notifications_broadcast_patient",
            "broadcast_id",
            "patient_id",
            unique=True,
            postgresql_where=text("broadcast_id IS NOT NULL"),
        ),
        # ... and each staff member of its group once.
        Index(
            "uq_notifications_broadcast_staff",
            "broadcast_id",
            "staff_id",
            unique=True,
            postgresql_where=text("broadcast_id IS NOT NULL AND staff_id IS NOT NULL"),
        ),
        # A broadcast's progress: its notifications that left `scheduled` are counted,
        # the rest are scheduled (a million-member broadcast's poll need not count them).
        Index(
            "ix_notifications_broadcast_moved",
            "broadcast_id",
            "state",
            postgresql_where=text("broadcast_id IS NOT NULL AND state <> 'scheduled'"),
        ),
        # GET /v1/groups/{name}/messages: newest first.
        Index(
            "ix_notifications_group_created",
            "group_name",
            "created_at",
            "id",
            postgresql_where=text("group_name IS NOT NULL"),
        ),
        # The same filtered by a state other than `scheduled` (failed, denied, ...: a
        # page of a rare state is a range read, not a walk of the whole group). A row
        # enters it only once it leaves `scheduled`: a broadcast's fan-out inserts pay
        # nothing for it, each later move of a group's row one entry.
        Index(
            "ix_notifications_group_moved",
            "group_name",
            "state",
            "created_at",
            "id",
            postgresql_where=text("group_name IS NOT NULL AND state <> 'scheduled'"),
        ),
        # The unread fallback: reminders taken by Imo or WhatsApp, not read, not fallen
        # back, not expired (the set stays as small as what is still worth sending).
        Index(
            "ix_notifications_unread",
            "expires_at",
            postgresql_where=text(UNREAD_CANDIDATES),
        ),
        # Resuming a switch: the notifications its pause holds.
        Index(
            "ix_notifications_paused_by",
            "paused_by",
            postgresql_where=text("paused_by IS NOT NULL"),
        ),
        # Room on each page for the claim's and settle's new row versions (migration
        # 20261205_dispatch_fillfactor).
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=time_ordered_uuid)
    # Exactly one of the two (ck_notifications_one_recipient): staff are reached by
    # email only (app/delivery/policy.py).
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(50))
    template_key: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(20))
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    appointment_id: Mapped[str | None] = mapped_column(String(64))
    remind_on: Mapped[date | None]
    send_at: Mapped[datetime | None]

    state: Mapped[str] = mapped_column(String(20))
    # The patient's country when it was scheduled: filled in by a trigger on insert, for
    # the dashboard's counts (app/models/notification_count.py). A staff member's
    # notification has the country of the patient whose event made it, if any.
    country: Mapped[str | None] = mapped_column(String(2))
    due_at: Mapped[datetime]
    # Past this moment the message is no longer useful: it ends `expired`.
    expires_at: Mapped[datetime]
    # The channels to try in order, fixed at the first dispatch, and the one reached.
    channel_chain: Mapped[list[str] | None] = mapped_column(ARRAY(String(20)))
    channel_index: Mapped[int] = mapped_column(Integer, default=0)
    # Transient failures on the current channel, for backoff.
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None]
    # The claiming worker's lease (dispatch_leases.id): while it is renewed the claim
    # stands; once it runs out any live worker takes the claim over. Null: claimed
    # without one (older workers), stale after SENDING_STALE_AFTER_SECONDS.
    lease_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    # The paused switch (its scope) holding this `scheduled` notification: due again
    # when it is resumed, or at `expires_at`.
    paused_by: Mapped[str | None] = mapped_column(String(120))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    # When the unread fallback handed it on to the next channel (once at most).
    unread_fallback_at: Mapped[datetime | None]

    # The API key that scheduled it (null: scheduled by the service, e.g. from a plan).
    api_key_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the scheduling request, to refuse a reused key with another body.
    request_hash: Mapped[str | None] = mapped_column(String(64))

    # Where the message came from: a trigger rule on an event, or a broadcast to a group.
    event_id: Mapped[str | None] = mapped_column(String(64))
    rule_name: Mapped[str | None] = mapped_column(String(100))
    broadcast_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    group_name: Mapped[str | None] = mapped_column(String(100))


class DeliveryAttempt(TimestampMixin, Base):
    """One try of one channel, for every channel in one table.

    `status` is normalised across channels; `provider_status`, `error_code` and
    `error_message` keep the provider's own words.
    """

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        CheckConstraint(f"status IN {tuple(s.value for s in AttemptStatus)}", name="status"),
        UniqueConstraint("channel", "provider_message_id"),
        # A notification's attempts; also how the sweeper finds a dead worker's.
        Index("ix_delivery_attempts_notification", "notification_id", "id"),
        # The gateway phones' pool (queued, no phone yet) and what each phone was offered
        # and has not acknowledged: what a poll answers, oldest first.
        Index(
            "ix_delivery_attempts_gateway_pool",
            "created_at",
            "id",
            postgresql_where=text(
                "channel = 'gateway' AND gateway_state IS NULL AND status = 'sent'"
            ),
        ),
        Index(
            "ix_delivery_attempts_gateway_offered",
            "gateway_id",
            "created_at",
            "id",
            postgresql_where=text("gateway_state = 'forwarded-to-gateway'"),
        ),
        # Each phone's attempts by state on the phone (GET /v1/gateways, the dashboard):
        # an index-only scan of that phone's attempts, none of the other channels'.
        Index(
            "ix_delivery_attempts_gateway_states",
            "gateway_id",
            "gateway_state",
            postgresql_where=text("gateway_id IS NOT NULL"),
        ),
        # The reconciler: attempts still `sent`, by channel, oldest first.
        Index(
            "ix_delivery_attempts_sent",
            "channel",
            "sent_at",
            postgresql_where=text("status = 'sent'"),
        ),
        # Room for the answer's row version on the attempt's page.
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    provider_status: Mapped[str | None] = mapped_column(String(50))
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    # Gateway phones only: the phone that took the message, where it stands on the
    # phone (None: queued; `forwarded-to-gateway`, `received-by-gateway`, ...), and every
    # status change with its time, `[{"state", "at", "reason"?}]`.
    gateway_id: Mapped[int | None] = mapped_column(ForeignKey("gateways.id", ondelete="SET NULL"))
    gateway_state: Mapped[str | None] = mapped_column(String(30))
    state_history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # Look-ups of a `sent` attempt at its provider, and the last one (app/delivery/reconcile.py).
    reconcile_checks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reconciled_at: Mapped[datetime | None]
