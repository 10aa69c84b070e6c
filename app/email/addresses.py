"""Email addresses as app/email compares and stores them, and as its logs name them.

The signed reply and bounce addresses are in app/reply_addresses.py (the channel builds
them too); they are re-exported here for app/email's readers.
"""

from __future__ import annotations

import re

from app import email_address
from app.reply_addresses import (
    BOUNCE_PREFIX,
    REPLY_PREFIX,
    bounce_address,
    bounce_token_matches,
    read_reply_token,
    reply_address,
    reply_token,
    tagged,
)

__all__ = [
    "BOUNCE_PREFIX",
    "REPLY_PREFIX",
    "InvalidAddress",
    "bounce_address",
    "bounce_token_matches",
    "mask",
    "normalise",
    "read_reply_token",
    "reply_address",
    "reply_token",
    "tagged",
]


class InvalidAddress(ValueError):
    """Not one email address we can store, match or mail."""


def normalise(text: str) -> str:
    """`text` as the address we store and compare: the project's normal form
    (app/email_address.py: syntax checked by email-validator, no DNS) in lower case.

    That module keeps the local part's case, as RFC 5321 allows a server to; blocking
    and matching a reply's sender must not miss `Rahim@example.com` for
    `rahim@example.com`, and no mail system gives those to two people. Raises
    InvalidAddress.
    """
    try:
        return email_address.normalize(text).lower()
    except email_address.InvalidEmailAddress as exc:
        raise InvalidAddress(str(exc)) from exc


def mask(address: str) -> str:
    """`rahim.uddin@example.com` -> `r***@e***.com`: enough to tell two log lines about
    the same address apart in context, not to write to it. Never log an address whole."""
    local, _, domain = address.rpartition("@")
    head, dot, tld = domain.rpartition(".")
    masked_domain = f"{head[:1]}***{dot}{tld}" if head else f"{domain[:1]}***"
    return f"{local[:1]}***@{masked_domain}"


def mask_in(text: str, address: str) -> str:
    """`text` with every spelling of `address` in it (any case) masked: a bounce's reason
    often quotes the address."""
    return re.sub(re.escape(address), mask(address), text, flags=re.IGNORECASE)
