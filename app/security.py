"""Signed tokens for callback URLs: Imo cannot sign its callbacks, so the URL must.

A token binds a value (an attempt id, a patient id) to a purpose with an HMAC, so it
cannot be forged, nor reused for another message, patient or kind of callback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

_DEVELOPMENT_KEY = "development-only-secret-key-never-used-in-production"
_SHA256_BLOCK = 64


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode, without its three Python calls: every patient of a round.
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def same_text(given: str, expected: str) -> bool:
    """`hmac.compare_digest` for text from a request: it raises TypeError for a str
    with a character beyond ASCII, so a token `YQ.é` in a callback URL, a form or a
    cookie was a 500. Compared as UTF-8 bytes (a lone surrogate as well)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class TokenSigner:
    def __init__(self, secret_key: str) -> None:
        key = (secret_key or _DEVELOPMENT_KEY).encode()
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        # HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once:
        # each token then costs two hash copies, under half of `hmac.digest` (a round
        # signs every patient it invites). tests/test_security.py holds it to hmac.
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def digest(self, purpose: str, value: str) -> bytes:
        """The whole HMAC-SHA256 of `value` for `purpose`: for tokens that pack their own
        bytes (an email reply address must fit 64 case-insensitive characters)."""
        inner = self._inner.copy()
        inner.update(f"{purpose}\x00{value}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(self.digest(purpose, value)[:18])

    def sign(self, purpose: str, value: str) -> str:
        return f"{_b64(value.encode())}.{self._mac(purpose, value)}"

    def verify(self, purpose: str, token: str) -> str | None:
        """The signed value, or None for a forged, malformed or other-purpose token."""
        encoded, _, mac = token.partition(".")
        if not encoded or not mac or len(token) > 300:
            return None
        try:
            value = _unb64(encoded).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return value if same_text(mac, self._mac(purpose, value)) else None
