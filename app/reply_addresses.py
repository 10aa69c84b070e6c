"""The signed addresses mail comes back to: a conversation's replies, a recipient's bounces.

A conversation's reply address is `reply+<token>@EMAIL_INBOUND_DOMAIN`. The token packs
the conversation id and an HMAC of it (the project's `TokenSigner`, purpose
`email-reply`), in lower-case base32: a local part must fit 64 characters and some
mail systems fold its case. It cannot be guessed (80 bits of MAC) nor moved to another
conversation. Mail to it is filed only when its sender is also the conversation's
patient or a staff member (app/email/replies.py).

Bounces come back to `bounce+<mac>@EMAIL_INBOUND_DOMAIN`, where the MAC is of the
recipient the message was sent to (VERP): a delivery status notification (RFC 3464)
blocks an address only when it arrives at that address's own bounce address, so nobody
can block a patient's address by mailing us a made-up report.

Shared vocabulary, like app/callback_urls.py: the email channel builds these addresses,
app/email reads them. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid

from app.security import TokenSigner

REPLY_PURPOSE = "email-reply"
BOUNCE_PURPOSE = "email-bounce"
REPLY_PREFIX = "reply+"
BOUNCE_PREFIX = "bounce+"
# 80 bits: enough against guessing, short enough for a 64-character local part.
_MAC_BYTES = 10
_UUID_BYTES = 16


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes | None:
    """The bytes of a token as `_b32` writes them, or None. Only that one spelling (any
    case): 42 characters carry 210 bits for 208, so another last character can decode
    to the same bytes, and a changed token must not verify."""
    try:
        data = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    return data if _b32(data) == text.lower() else None


def reply_token(signer: TokenSigner, conversation_id: uuid.UUID) -> str:
    mac = signer.digest(REPLY_PURPOSE, str(conversation_id))[:_MAC_BYTES]
    return _b32(conversation_id.bytes + mac)


def read_reply_token(signer: TokenSigner, token: str) -> uuid.UUID | None:
    """The conversation a reply token names, or None for one we did not sign."""
    if len(token) > 64:
        return None
    packed = _unb32(token)
    if packed is None or len(packed) != _UUID_BYTES + _MAC_BYTES:
        return None
    conversation_id = uuid.UUID(bytes=packed[:_UUID_BYTES])
    expected = signer.digest(REPLY_PURPOSE, str(conversation_id))[:_MAC_BYTES]
    return conversation_id if hmac.compare_digest(packed[_UUID_BYTES:], expected) else None


def reply_address(signer: TokenSigner, domain: str, conversation_id: uuid.UUID) -> str:
    """The Reply-To of every email sent on `conversation_id`."""
    return f"{REPLY_PREFIX}{reply_token(signer, conversation_id)}@{domain}"


def bounce_address(signer: TokenSigner, domain: str, recipient: str) -> str:
    """The envelope sender (MAIL FROM) of an email to `recipient` (normalised): where
    its delivery status notifications come back, signed for that recipient alone."""
    mac = signer.digest(BOUNCE_PURPOSE, recipient.lower())[:_MAC_BYTES]
    return f"{BOUNCE_PREFIX}{_b32(mac)}@{domain}"


def bounce_token_matches(signer: TokenSigner, token: str, recipient: str) -> bool:
    """Whether `token` (what follows `bounce+`) was signed for `recipient`."""
    mac = signer.digest(BOUNCE_PURPOSE, recipient.lower())[:_MAC_BYTES]
    return hmac.compare_digest(token.lower().encode(), _b32(mac).encode())


def tagged(address: str, prefix: str, domain: str) -> str | None:
    """What follows `prefix` in `address` when it is `prefix<tag>@domain` (any case),
    else None."""
    local, _, at_domain = address.strip().rpartition("@")
    if at_domain.lower() != domain.lower() or not local.lower().startswith(prefix):
        return None
    return local[len(prefix) :] or None
