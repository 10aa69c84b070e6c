"""Cursors: opaque, round-trip exactly, and anything else is a clear 422 naming `cursor`."""

from __future__ import annotations

import base64
import functools
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from app import pagination
from app.config import Settings
from app.errors import InvalidInput
from app.main import create_app
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


@functools.cache
def openapi() -> dict[str, Any]:
    return create_app(Settings(app_env="test")).openapi()


def lists_of_the_api() -> set[str]:
    """Every GET of the OpenAPI document that takes a cursor: every list."""
    document = openapi()
    return {
        path
        for path, operations in document["paths"].items()
        if any(p["name"] == "cursor" for p in operations.get("get", {}).get("parameters", []))
    }


def time_filters(path: str) -> list[str]:
    """The query parameters of a list's GET that hold a date-time."""
    document = openapi()
    found = []
    for parameter in document["paths"][path]["get"].get("parameters", []):
        schema = parameter.get("schema", {})
        kinds = [schema, *schema.get("anyOf", [])]
        if parameter["in"] == "query" and any(k.get("format") == "date-time" for k in kinds):
            found.append(parameter["name"])
    return found


async def every_list(api: httpx.AsyncClient) -> dict[str, str]:
    """A URL of each list of the API, on things made for it."""
    patient_id, group, event_id = unique_id(), unique_id("g"), unique_id("e")
    assert (await api.put(f"/v1/patients/{patient_id}", json=patient_body())).is_success
    assert (await api.put(f"/v1/groups/{group}", json={"members": [patient_id]})).is_success
    posted = await api.post(
        "/v1/events",
        json={
            "id": event_id,
            "type": "cursor_check",
            "patient_id": patient_id,
            "occurred_at": "2026-11-23T10:00:00+06:00",
        },
    )
    assert posted.is_success, posted.text
    opened = await api.post("/v1/conversations", json={"patient_id": patient_id, "subject": "x"})
    assert opened.is_success, opened.text
    staff_id = unique_id("s")
    staffed = await api.put(
        f"/v1/staff/{staff_id}",
        json={"name": "Nurse", "email": "nurse@example.org", "locale": "en"},
    )
    assert staffed.is_success, staffed.text
    urls = {
        "/v1/patients": "/v1/patients",
        "/v1/patients/{patient_id}/notifications": f"/v1/patients/{patient_id}/notifications",
        "/v1/patients/{patient_id}/messages": f"/v1/patients/{patient_id}/messages",
        "/v1/notifications": "/v1/notifications",
        "/v1/experiments": "/v1/experiments",
        "/v1/reminder-plans": "/v1/reminder-plans",
        "/v1/groups/{name}/messages": f"/v1/groups/{group}/messages",
        "/v1/events/{event_id}/messages": f"/v1/events/{event_id}/messages",
        "/v1/conversations/{conversation_id}": f"/v1/conversations/{opened.json()['id']}",
        "/v1/email-status/{address}": "/v1/email-status/someone@example.org",
        "/v1/inbound-emails": "/v1/inbound-emails",
        "/v1/staff/{staff_id}/messages": f"/v1/staff/{staff_id}/messages",
    }
    # A list added later is named here, or this fails: each must be tried.
    assert set(urls) == lists_of_the_api()
    return urls


@pytest.mark.asyncio(loop_scope="session")
class TestEveryList:
    """Over HTTP, every list of the API (from the OpenAPI document): a crafted cursor,
    or a time filter at either end of the calendar, is a 422 naming it, never a 500."""

    CURSORS = [
        *GARBAGE,
        crafted("2026-11-23T10:00:00+00:00", str(uuid.uuid4()), "x"),
        crafted("a\x00b"),
        crafted(2**70),
        crafted("9999-12-31T23:59:59+00:00", 2**63),
        crafted("2026-11-23T10:00:00+00:00", 2**63),
    ]

    async def test_a_crafted_cursor_is_a_422_naming_it(self, api: httpx.AsyncClient) -> None:
        for path, url in (await every_list(api)).items():
            for cursor in self.CURSORS:
                answer = await api.get(url, params={"cursor": cursor})
                assert answer.status_code == 422, (path, cursor, answer.text)
                error = answer.json()["error"]
                assert error["details"][0]["field"] == "cursor", path
                assert "not a cursor of this list" in error["message"]

    @pytest.mark.parametrize(
        "moment",
        [
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59Z",
        ],
    )
    async def test_a_time_at_the_edge_of_the_calendar_is_a_422_naming_it(
        self, api: httpx.AsyncClient, moment: str
    ) -> None:
        # Found auditing issue 11: `created_from=0001-01-01T00:00:00+14:00` is a time
        # pydantic takes and asyncpg cannot send (before year 1 in UTC): a 500.
        tried = 0
        for path, url in (await every_list(api)).items():
            for name in time_filters(path):
                answer = await api.get(url, params={name: moment})
                assert answer.status_code == 422, (path, name, answer.text)
                assert name in answer.text, answer.text
                tried += 1
        assert tried >= 10  # /v1/notifications' four, and each history's two
