"""Twilio webhook signatures (`X-Twilio-Signature`), computed and checked with one code.

Both sides go through `twilio.request_validator.RequestValidator`, so the fake Twilio
signs exactly as the service checks, and both sign as Twilio does: HMAC-SHA1 of the
full callback URL followed by every form parameter, name then value, sorted by name.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import urlparse

from twilio.request_validator import RequestValidator, add_port, remove_port

SIGNATURE_HEADER = "X-Twilio-Signature"


@lru_cache(maxsize=8)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Twilio sends for a form POST of `params` to exactly `url`."""
    return str(_validator(auth_token).compute_signature(url, params))


def is_valid(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """True when `signature` signs `params` POSTed to `url`; False when it is missing.

    `url` is the full URL the request arrived at, query string included. Twilio signs
    it with or without the default port depending on the product, so both are accepted,
    as Twilio's own validator does. Comparisons are constant-time.
    """
    if not signature or not auth_token:
        return False
    validator = _validator(auth_token)
    parsed = urlparse(url)
    given = signature.encode()
    with_port = validator.compute_signature(add_port(parsed), params).encode()
    without_port = validator.compute_signature(remove_port(parsed), params).encode()
    # `|`, not `or`: both comparisons always run.
    return hmac.compare_digest(with_port, given) | hmac.compare_digest(without_port, given)
