"""What a provider event or a bounce does to an address's status: the one home of it.

- A hard bounce, a spam complaint, an unsubscribe, or a drop because the provider has
  the address suppressed: `blocked`, until an explicit unblock. An event that happened
  before the last unblock is history only (a late retry of the bounce that was
  forgiven does not block again).
- A delivery: `deliverable`, unless blocked (a blocked address stays blocked: only a
  person unblocks it).
- A soft bounce, a delay: history only.

What the same events say of the one email they are about (`MessageReport`) is applied to
its delivery attempt instead, by app/email/reports.py.

No I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from app.models.email_address import EmailStatus
from app.states import AttemptStatus


class AddressEventKind(enum.StrEnum):
    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    DROPPED = "dropped"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    UNBLOCKED = "unblocked"


K = AddressEventKind

BLOCKING = frozenset({K.HARD_BOUNCE, K.DROPPED, K.COMPLAINT, K.UNSUBSCRIBE})
_LABELS = {
    K.HARD_BOUNCE: "hard bounce",
    K.DROPPED: "dropped by the provider",
    K.COMPLAINT: "spam complaint",
    K.UNSUBSCRIBE: "unsubscribed",
}
MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class AddressEvent:
    address: str
    kind: AddressEventKind
    # `sendgrid`, `dsn` or `api`.
    source: str
    occurred_at: datetime
    detail: str | None = None
    provider_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageReport:
    """What a provider event or a bounce email says of one email we sent, named by our
    Message-ID (without its angle brackets), which the email channel recorded as the
    attempt's provider id.

    `status` as for any provider's report: `delivered`, `failed`, `read`, or `sent` for
    what moves nothing and is kept in the raw report log only (a deferral, a delay).
    `failure` says what became of a failed email (`bounced`, `dropped by SendGrid`), for
    the notification's failure reason.
    """

    message_id: str
    # The recipient (normalised): masked wherever the provider's text repeats it.
    address: str
    status: AttemptStatus
    provider_status: str
    error_code: str | None = None
    detail: str | None = None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class AddressState:
    status: EmailStatus
    reason: str | None
    unblocked_at: datetime | None


def apply(state: AddressState, event: AddressEvent) -> AddressState:
    """The address's state after `event`."""
    if event.kind in BLOCKING:
        if state.unblocked_at is not None and event.occurred_at <= state.unblocked_at:
            return state
        label = _LABELS[event.kind]
        reason = f"{label}: {event.detail}" if event.detail else label
        return AddressState(EmailStatus.BLOCKED, reason[:MAX_REASON_CHARS], state.unblocked_at)
    if event.kind == K.DELIVERED and state.status != EmailStatus.BLOCKED:
        return AddressState(EmailStatus.DELIVERABLE, None, state.unblocked_at)
    if event.kind == K.UNBLOCKED and state.status == EmailStatus.BLOCKED:
        return AddressState(EmailStatus.UNKNOWN, None, event.occurred_at)
    return state
