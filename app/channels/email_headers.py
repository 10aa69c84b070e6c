"""The hook for headers an email carries beyond its own: the one place replies by email
plug in (a conversation's `Reply-To: reply+<signed token>@{EMAIL_INBOUND_DOMAIN}`).

`EmailChannel` calls `conversation_headers` for every message it sends, through the
registry (app/channels/registry.py), which binds the settings. It must be fast and pure
(no I/O: it runs once per email on the send path), may read `message.conversation_id`
(set for a staff message on a conversation) and `message.reference` (the notification's
id), and returns header names and values; the channel refuses the message's own headers
(From, To, Subject, Message-ID, ...) and flattens line breaks in values.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.channels.base import OutgoingMessage
from app.config import Settings


def conversation_headers(message: OutgoingMessage, settings: Settings) -> Mapping[str, str]:
    """No extra header until replies by email are configured."""
    return {}
