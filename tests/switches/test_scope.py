"""Switch scopes: how they are written, and which messages a paused one holds."""

from __future__ import annotations

import pytest

from app.switches.scope import Scope, ScopeError, Switchboard, parse_scope


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "canonical"),
        [
            ("all", "all"),
            ("country=IN", "country=IN"),
            ("country=in", "country=IN"),
            ("channel=whatsapp", "channel=whatsapp"),
            ("purpose=missed_visit", "purpose=missed_visit"),
            ("channel=whatsapp,country=IN", "country=IN,channel=whatsapp"),
            (" country=BD , purpose=missed_visit ", "country=BD,purpose=missed_visit"),
            ("purpose=x,channel=imo,country=BD", "country=BD,channel=imo,purpose=x"),
        ],
    )
    def test_one_canonical_spelling(self, text: str, canonical: str) -> None:
        assert str(parse_scope(text)) == canonical

    @pytest.mark.parametrize(
        ("text", "complaint"),
        [
            ("", "is not key=value"),
            ("IN", "is not key=value"),
            ("country=", "is not key=value"),
            ("region=south", "unknown scope key 'region'"),
            ("country=IN,country=BD", "'country' is given twice"),
            ("country=IND", "not a two-letter country code"),
            ("country=1N", "not a two-letter country code"),
            ("channel=telegram", "unknown channel 'telegram'"),
            ("purpose=Missed-Visit", "is not lower-case letters"),
        ],
    )
    def test_what_does_not_parse_says_why(self, text: str, complaint: str) -> None:
        with pytest.raises(ScopeError, match=complaint):
            parse_scope(text)


class TestHolding:
    BOARD = Switchboard([Scope(country="IN"), Scope(channel="imo", purpose="missed_visit")])

    @pytest.mark.parametrize(
        ("country", "purpose", "channel", "held_by"),
        [
            ("IN", "appointment_reminder", "whatsapp", "country=IN"),
            ("in", "appointment_reminder", "sms", "country=IN"),
            ("BD", "missed_visit", "imo", "channel=imo,purpose=missed_visit"),
            ("BD", "missed_visit", "sms", None),  # the next channel is not paused
            ("BD", "appointment_reminder", "imo", None),
            ("KE", "missed_visit", "whatsapp", None),
        ],
    )
    def test_a_message_is_held_when_every_part_matches(
        self, country: str, purpose: str, channel: str, held_by: str | None
    ) -> None:
        scope = self.BOARD.holding(country, purpose, channel)
        assert (str(scope) if scope else None) == held_by

    def test_all_holds_everything(self) -> None:
        assert Switchboard([Scope()]).holding("BD", "x", "sms") == Scope()

    def test_nothing_paused_holds_nothing(self) -> None:
        board = Switchboard([])
        assert not board
        assert board.holding("IN", "x", "sms") is None

    @pytest.mark.parametrize(
        ("scopes", "stops"),
        [
            ([Scope(channel="imo")], True),
            ([Scope()], True),
            ([Scope(channel="sms")], False),
            ([Scope(country="BD", channel="imo")], False),
            ([Scope(channel="imo", purpose="missed_visit")], False),
        ],
    )
    def test_invitation_rounds_stop_for_all_and_for_imo(
        self, scopes: list[Scope], stops: bool
    ) -> None:
        assert (Switchboard(scopes).holds_invitations() is not None) == stops
