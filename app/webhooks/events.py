"""The events a clinic system can subscribe to. Pure."""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    MESSAGE_RECEIVED = "message.received"
    CONVERSATION_OPENED = "conversation.opened"
    CONVERSATION_CLOSED = "conversation.closed"
    CONSENT_CHANGED = "consent.changed"


EVENT_TYPES = tuple(e.value for e in EventType)
