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

import uuid
from collections.abc import Mapping
from functools import lru_cache

from app import reply_addresses
from app.channels.base import OutgoingMessage
from app.config import Settings
from app.security import TokenSigner


@lru_cache(maxsize=4)
def _signer(secret_key: str) -> TokenSigner:
    return TokenSigner(secret_key)


def conversation_headers(message: OutgoingMessage, settings: Settings) -> Mapping[str, str]:
    """`Reply-To` for a message on a conversation: its signed reply address, which
    app/email files replies from (app/reply_addresses.py)."""
    if not message.conversation_id:
        return {}
    signer = _signer(settings.secret_key.get_secret_value())
    conversation_id = uuid.UUID(message.conversation_id)
    return {
        "Reply-To": reply_addresses.reply_address(
            signer, settings.email_inbound_domain, conversation_id
        )
    }


def envelope_sender(recipient: str, settings: Settings) -> str:
    """The envelope sender (MAIL FROM) of an email to `recipient`: its own signed
    bounce address, so that a delivery status notification coming back is believed for
    that recipient alone (VERP)."""
    signer = _signer(settings.secret_key.get_secret_value())
    return reply_addresses.bounce_address(signer, settings.email_inbound_domain, recipient)
