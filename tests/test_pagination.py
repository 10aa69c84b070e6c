"""Cursors: opaque, round-trip exactly, and anything else is a clear 422 naming `cursor`."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from app import pagination
from app.errors import InvalidInput
from tests.factories import patient_body, unique_id


def crafted(*parts: object) -> str:
    """A cursor as someone might forge one: valid base64 of a JSON array."""
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


GARBAGE = [
    "!!",
    "bm9wZQ",  # base64 of "nope"
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
    crafted(),  # too short
    crafted("2026-11-23T10:00:00+00:00", str(uuid.uuid4()), 1),  # too long
    crafted({"created_at": "2026-11-23T10:00:00+00:00"}),
    crafted("2026-11-23T10:00:00", str(uuid.uuid4())),  # no offset
    crafted("2026-11-23T10:00:00+00:00", "not-a-uuid"),
    crafted(20261123, str(uuid.uuid4())),
    # Extreme times: valid ISO 8601, but outside what can be compared with a row, or
    # past what Python holds once moved to UTC.
    crafted("0001-01-01T00:00:00+14:00", str(uuid.uuid4())),
    crafted("9999-12-31T23:59:59-14:00", str(uuid.uuid4())),
    crafted("1900-01-01T00:00:00+00:00", str(uuid.uuid4())),
    crafted("+10000-01-01T00:00:00+00:00", str(uuid.uuid4())),
]


class TestCodec:
    def test_round_trip(self) -> None:
        moment = datetime(2026, 11, 23, 10, 45, 1, 123456, tzinfo=UTC)
        key = (moment, uuid.uuid4(), "plan-a", 2**63 - 1)
        cursor = pagination.encode(*key)
        assert "=" not in cursor
        assert pagination.decode(cursor, datetime, uuid.UUID, str, int) == key

    def test_a_time_with_an_offset_comes_back_in_utc(self) -> None:
        dhaka = datetime(2026, 11, 23, 16, 45, tzinfo=timezone(timedelta(hours=6)))
        (moment,) = pagination.decode(pagination.encode(dhaka), datetime)
        assert moment == dhaka and moment.tzinfo is UTC

    @pytest.mark.parametrize("cursor", GARBAGE)
    def test_garbage_names_the_cursor(self, cursor: str) -> None:
        with pytest.raises(InvalidInput) as raised:
            pagination.decode(cursor, datetime, uuid.UUID)
        assert raised.value.details[0]["field"] == "cursor"

    @pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**400, True, 1.5, "1"], ids=repr)
    def test_integers_out_of_bigint_or_of_another_type(self, value: object) -> None:
        with pytest.raises(InvalidInput, match="cursor"):
            pagination.decode(crafted(value), int)

    @pytest.mark.parametrize("value", ["a\x00b", "x" * 201, 7, None])
    def test_strings_postgresql_would_refuse(self, value: object) -> None:
        with pytest.raises(InvalidInput, match="cursor"):
            pagination.decode(crafted(value), str)

    def test_split(self) -> None:
        rows = [(1, "a"), (2, "b"), (3, "c")]
        assert pagination.split(rows, 3, lambda r: (r[0],)) == (rows, None)
        page, cursor = pagination.split(rows, 2, lambda r: (r[0],))
        assert page == rows[:2]
        assert cursor is not None and pagination.decode(cursor, int) == (2,)


@pytest.mark.asyncio(loop_scope="session")
class TestEveryListRefusesCraftedCursors:
    """Over HTTP: each list answers a 422 naming `cursor`, never a 500."""

    @pytest.mark.parametrize(
        "cursor",
        [
            *GARBAGE,
            crafted("2026-11-23T10:00:00+00:00", str(uuid.uuid4()), "x"),
            crafted("a\x00b"),
            crafted(2**70),
        ],
    )
    async def test_422(self, api: httpx.AsyncClient, cursor: str) -> None:
        patient_id = unique_id()
        assert (await api.put(f"/v1/patients/{patient_id}", json=patient_body())).is_success
        for path in [
            f"/v1/patients/{patient_id}/notifications",
            "/v1/patients",
            "/v1/notifications",
            "/v1/experiments",
            "/v1/reminder-plans",
        ]:
            answer = await api.get(path, params={"cursor": cursor})
            assert answer.status_code == 422, (path, answer.text)
            error = answer.json()["error"]
            assert error["details"][0]["field"] == "cursor", path
            assert "not a cursor of this list" in error["message"]
