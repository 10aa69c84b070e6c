"""The send path's data, shared by its rules (`policy`), its SQL (`repository`) and the
code that drives them: a claimed notification, where one stands after a step, and a
provider's report on an attempt."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.channels.base import WhatsAppTemplateMessage
from app.states import AttemptStatus, NotificationState
from app.validation import storable_text


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A notification a worker has claimed, with what sending it needs of its patient,
    or of its staff member (`staff_id` set, `patient_id` None: their name, email and
    time zone in the patient fields; no mobile, no consent, no opt-outs)."""

    id: uuid.UUID
    patient_id: str | None
    purpose: str
    title: str
    body: str
    locale: str
    expires_at: datetime
    channel_chain: list[str] | None
    channel_index: int
    retry_count: int
    full_name: str
    mobile_e164: str | None
    country: str
    time_zone: str
    reminder_consent: str
    imo_status: str | None
    # The claim's moment: a fencing token, so that a claim lost to the sweeper is not sent.
    claimed_at: datetime | None = None
    # The channels the patient opted out of themselves ("*": all of them).
    opted_out_channels: Sequence[str] = ()
    # The patient wrote on WhatsApp in the last 24 hours: free text may go there.
    whatsapp_window_open: bool = False
    # WhatsApp said lately that this number has no account (WHATSAPP_RETRY_NO_ACCOUNT_DAYS).
    whatsapp_unavailable: bool = False
    # The reminder's template as a WhatsApp template, its parameters filled in, if mapped.
    whatsapp_template: WhatsAppTemplateMessage | None = None
    # The patient's email address (normalised), if any.
    email: str | None = None
    # A staff message on a conversation: its id and subject.
    conversation_id: str | None = None
    conversation_subject: str | None = None
    # Why the patient's address may not be mailed (a hard bounce, a complaint), if it
    # may not: the per-address check (`policy.email_denial`) reads it.
    email_blocked: str | None = None
    # A staff member's notification: reached by email only (`policy.first_step`).
    staff_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one notification stands after a step of the dispatcher."""

    state: NotificationState
    channel_chain: list[str] | None = None
    channel_index: int = 0
    due_at: datetime | None = None
    retry_count: int = 0
    failure_reason: str | None = None
    # Set when a channel accepted the message.
    sent_at: datetime | None = None
    # The paused switch (its scope) that holds the notification, when one does.
    paused_by: str | None = None


@dataclass(frozen=True, slots=True)
class SendOn:
    """Send on `chain[index]` next."""

    chain: list[str]
    index: int


@dataclass(frozen=True, slots=True)
class Report:
    attempt_id: int
    status: AttemptStatus
    provider_message_id: str | None = None
    provider_status: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    # A FAILED report: why the notification moves on (or fails), when the service, not
    # the provider, decided it (a gateway phone gone silent); None: the provider said so.
    failure_reason: str | None = None

    def __post_init__(self) -> None:
        # A provider's fields are kept as they came, but PostgreSQL cannot store a null
        # character: one in an error text failed the report (and its batch) with a 500.
        for name in ("provider_message_id", "provider_status", "error_code", "error_message"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, storable_text(value))
