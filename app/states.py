"""Notification states and delivery-attempt statuses, and the order they move in.

A state only moves forward: a late or repeated provider callback never takes a message
back. The one backward step is deliberate and internal: a message whose channel failed
returns to `scheduled` to try the next channel (or to wait out a transient error).
"""

from __future__ import annotations

import enum


class NotificationState(enum.StrEnum):
    SCHEDULED = "scheduled"
    # Never stored: the API reports a scheduled notification that is due as `pending`.
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    DENIED = "denied"
    CLEARED = "cleared"
    MUTED = "muted"
    EXPIRED = "expired"


STORED_STATES = tuple(s.value for s in NotificationState if s is not NotificationState.PENDING)

# States in which a channel has taken the message.
ACCEPTED_STATES = frozenset(
    {NotificationState.SENT, NotificationState.DELIVERED, NotificationState.READ}
)
# States a person can still cancel, mute or unmute from.
UNSENT_STATES = frozenset({NotificationState.SCHEDULED, NotificationState.MUTED})

# Progress of a message that a channel took; a callback may only raise it.
ACCEPTED_RANK = {
    NotificationState.SENT: 1,
    NotificationState.DELIVERED: 2,
    NotificationState.READ: 3,
}


class AttemptStatus(enum.StrEnum):
    """One normalised status for every channel's delivery attempts."""

    SENDING = "sending"
    # The process died between asking the provider and writing down its answer.
    UNCONFIRMED = "unconfirmed"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# A callback may only move an attempt to a higher rank. `failed` and `delivered` are
# both final for a provider: whichever arrives first stands.
ATTEMPT_RANK = {
    AttemptStatus.SENDING: 0,
    AttemptStatus.UNCONFIRMED: 1,
    AttemptStatus.SENT: 2,
    AttemptStatus.FAILED: 3,
    AttemptStatus.DELIVERED: 3,
    AttemptStatus.READ: 4,
}

# "Reached the patient", the same for every channel: an Imo read, an SMS delivered.
REACHED_STATUSES = frozenset({AttemptStatus.DELIVERED, AttemptStatus.READ})


class ChannelName(enum.StrEnum):
    """The channels a reminder can go on (CHANNEL_CHAINS, switches, attempts)."""

    IMO = "imo"
    WHATSAPP = "whatsapp"
    SMS = "sms"
