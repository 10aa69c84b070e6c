"""The protocol's pure parts: a poll's body, gzip within a cap, the phone's pace."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import pytest

from app.gateways import protocol
from app.gateways import service as gateway_service


def test_a_poll_offers_what_the_phone_sends_since_its_last() -> None:
    now = datetime.now(UTC)
    assert gateway_service.pace(60, None, now) == 25
    assert gateway_service.pace(60, now - timedelta(seconds=10), now) == 10
    assert gateway_service.pace(60, now - timedelta(minutes=5), now) == 25
    assert gateway_service.pace(60, now, now) == 1
    assert gateway_service.pace(6, now - timedelta(seconds=5), now) == 1


def test_statuses_map_as_cht_core_maps_them() -> None:
    states = {s: protocol.Update("x", s, None).state for s in protocol.STATUS_STATES}
    assert states == {
        "UNSENT": "received-by-gateway",
        "PENDING": "forwarded-by-gateway",
        "SENT": "sent",
        "DELIVERED": "delivered",
        "FAILED": "failed",
    }
    assert protocol.Update("x", "sent", None).state == "unrecognised"


def test_a_body_parses_dropping_bad_entries_only() -> None:
    poll = protocol.parse_poll(
        b'{"messages": [{"id": "a", "from": "+1", "content": "hi", "sms_sent": 1000},'
        b' {"id": "", "from": "+1", "content": "x"}, {"id": "b", "from": "+1", "content": 5},'
        b' {"id": "c", "from": "+1", "content": ""}],'
        b' "updates": [{"id": "c", "status": "SENT"}, {"id": "d"}, {"id": "e", "status": "FAILED",'
        b' "reason": "no credit"}], "extra": {}}'
    )
    assert [m.id for m in poll.messages] == ["a"]
    assert poll.messages[0].sms_sent == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    # An update without a status is kept: cht-core records it `unrecognised`.
    assert [(u.id, u.status, u.reason, u.state) for u in poll.updates] == [
        ("c", "SENT", None, "sent"),
        ("d", None, None, "unrecognised"),
        ("e", "FAILED", "no credit", "failed"),
    ]
    assert poll.dropped == 3
    assert protocol.parse_poll(b"") == protocol.Poll([], [], 0)


def test_gzip_inflates_within_the_cap_only() -> None:
    assert protocol.decompress(gzip.compress(b"{}"), 10) == b"{}"
    with pytest.raises(protocol.BodyTooLarge):
        protocol.decompress(gzip.compress(b" " * 11), 10)
    with pytest.raises(protocol.ProtocolError):
        protocol.decompress(b"not gzip", 10)


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        ("+8801711999999", "BD", "+8801711999999"),
        ("8801711999999", "BD", "+8801711999999"),
        ("01711999999", "BD", "+8801711999999"),
        ("00880 1711 999999", "BD", "+8801711999999"),
        ("017-1199-9999", "BD", "+8801711999999"),
        ("+254712345678", "BD", "+254712345678"),
        ("0712345678", "KE", "+254712345678"),
        ("+8801711999999", None, "+8801711999999"),
    ],
)
def test_a_senders_number_is_read_with_the_gateways_country(
    raw: str, country: str | None, e164: str
) -> None:
    assert protocol.sender_e164(raw, country) == e164


@pytest.mark.parametrize(("raw", "country"), [("MPESA", "BD"), ("01711999999", None), ("", "BD")])
def test_a_sender_that_is_no_phone_number_is_refused(raw: str, country: str | None) -> None:
    with pytest.raises(ValueError, match="phone number"):
        protocol.sender_e164(raw, country)
