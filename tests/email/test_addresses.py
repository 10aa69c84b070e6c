"""Reply and bounce addresses: signed, compact, case-proof; addresses normalised."""

from __future__ import annotations

import uuid

import pytest

from app.email import addresses
from app.security import TokenSigner

SIGNER = TokenSigner("a-test-secret-key-with-enough-distinct-characters")


class TestReplyAddress:
    def test_round_trip_and_fits_a_local_part(self) -> None:
        conversation = uuid.uuid4()
        address = addresses.reply_address(SIGNER, "reply.clinic.example", conversation)
        local, _, domain = address.partition("@")
        assert domain == "reply.clinic.example"
        assert len(local) <= 64
        token = addresses.tagged(address, addresses.REPLY_PREFIX, "reply.clinic.example")
        assert token is not None
        assert addresses.read_reply_token(SIGNER, token) == conversation

    def test_a_mail_system_that_folds_case_does_not_break_it(self) -> None:
        conversation = uuid.uuid4()
        address = addresses.reply_address(SIGNER, "reply.clinic.example", conversation).upper()
        token = addresses.tagged(address, addresses.REPLY_PREFIX, "reply.clinic.example")
        assert token is not None
        assert addresses.read_reply_token(SIGNER, token) == conversation

    def test_another_key_or_a_changed_token_does_not_verify(self) -> None:
        token = addresses.reply_token(SIGNER, uuid.uuid4())
        other = TokenSigner("another-secret-key-with-enough-distinct-characters")
        assert addresses.read_reply_token(other, token) is None
        # Every other last character: some differ only in the encoding's two spare bits.
        for last in "abcdefghijklmnopqrstuvwxyz234567":
            if last != token[-1]:
                assert addresses.read_reply_token(SIGNER, token[:-1] + last) is None, last
        assert addresses.read_reply_token(SIGNER, token.upper()) is not None
        # Another conversation's id with this token's MAC.
        forged = addresses.reply_token(SIGNER, uuid.uuid4())[:26] + token[26:]
        assert addresses.read_reply_token(SIGNER, forged) is None
        for junk in ("", "x", "!!!!", "a" * 200, "0" * 42):
            assert addresses.read_reply_token(SIGNER, junk) is None

    def test_only_our_domain_and_prefix(self) -> None:
        assert addresses.tagged("reply+abc@other.example", "reply+", "reply.example") is None
        assert addresses.tagged("bounce+abc@reply.example", "reply+", "reply.example") is None
        assert addresses.tagged("reply+@reply.example", "reply+", "reply.example") is None


class TestBounceAddress:
    def test_signed_for_its_recipient_alone(self) -> None:
        address = addresses.bounce_address(SIGNER, "reply.example", "rahim@example.com")
        token = addresses.tagged(address, addresses.BOUNCE_PREFIX, "reply.example")
        assert token is not None
        assert addresses.bounce_token_matches(SIGNER, token, "Rahim@Example.com")
        assert not addresses.bounce_token_matches(SIGNER, token, "karim@example.com")


class TestNormalise:
    def test_lower_case(self) -> None:
        assert addresses.normalise("  Rahim.Uddin+x@Example.COM ") == "rahim.uddin+x@example.com"

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "rahim",
            "@example.com",
            "rahim@",
            "rahim@localhost",
            "ra him@example.com",
            "rahim@exa mple.com",
            "a..b@example.com",
            ".a@example.com",
            "rahim@example.com\r\nBcc: x@y.z",
            '"quoted"@example.com',
            "rahim@" + "a" * 250 + ".com",
            "Rahim <rahim@example.com>",
        ],
    )
    def test_refused(self, text: str) -> None:
        with pytest.raises(addresses.InvalidAddress):
            addresses.normalise(text)

    def test_mask_hides_the_address(self) -> None:
        assert addresses.mask("rahim.uddin@example.com") == "r***@e***.com"
