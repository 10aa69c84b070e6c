"""The events a clinic system can subscribe to. Pure."""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    MESSAGE_RECEIVED = "message.received"
    CONVERSATION_OPENED = "conversation.opened"
    CONVERSATION_CLOSED = "conversation.closed"
    CONSENT_CHANGED = "consent.changed"
    # A notification reached one of these states (app/states.py names them).
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_DELIVERED = "notification.delivered"
    NOTIFICATION_READ = "notification.read"
    NOTIFICATION_FAILED = "notification.failed"
    NOTIFICATION_DENIED = "notification.denied"
    NOTIFICATION_EXPIRED = "notification.expired"
    IMO_SUBSCRIBED = "imo.subscribed"
    # An email address's status became `blocked`, or stopped being (app/email/status.py).
    EMAIL_BLOCKED = "email.blocked"
    EMAIL_UNBLOCKED = "email.unblocked"


EVENT_TYPES = tuple(e.value for e in EventType)

# The notification states that are events, each as `notification.<state>`.
NOTIFICATION_EVENT_STATES = tuple(
    e.value.removeprefix("notification.") for e in EventType if e.value.startswith("notification.")
)
