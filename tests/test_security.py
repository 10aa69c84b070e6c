"""Callback-URL tokens: HMAC-SHA256 as the standard library computes it, bound to purpose."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from app.security import TokenSigner


@pytest.mark.parametrize("secret", ["", "short", "k" * 64, "a much longer secret " * 10])
def test_the_mac_is_hmac_sha256_of_purpose_and_value(secret: str) -> None:
    signer = TokenSigner(secret)
    token = signer.sign("imo-invitation", "patient-42")
    encoded, _, mac = token.partition(".")
    key = (secret or "development-only-secret-key-never-used-in-production").encode()
    expected = hmac.digest(key, b"imo-invitation\x00patient-42", hashlib.sha256)[:18]
    assert base64.urlsafe_b64decode(mac + "==") == expected
    assert base64.urlsafe_b64decode(encoded + "==") == b"patient-42"


def test_a_token_verifies_for_its_purpose_only() -> None:
    signer = TokenSigner("secret")
    token = signer.sign("imo-invitation", "patient-42")
    assert signer.verify("imo-invitation", token) == "patient-42"
    assert signer.verify("imo-read", token) is None
    assert TokenSigner("other").verify("imo-invitation", token) is None


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "abc.", ".abc", "!!!.abc", "x" * 400, "YQ.\u00e9", "YQ.\udc80", "\u00e9.YQ"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert TokenSigner("secret").verify("imo-invitation", token) is None


def test_a_tampered_value_is_refused() -> None:
    signer = TokenSigner("secret")
    _, _, mac = signer.sign("imo-invitation", "patient-42").partition(".")
    forged = base64.urlsafe_b64encode(b"patient-43").rstrip(b"=").decode()
    assert signer.verify("imo-invitation", f"{forged}.{mac}") is None
