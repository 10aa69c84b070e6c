"""PUT /v1/switches/{scope} and GET /v1/switches, on the app with real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Notification
from app.switches.repository import _RELEASE
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

PAUSE = {"paused": True, "reason": "carrier incident", "by": "ops@example.org"}
RESUME = {"paused": False, "reason": "carrier back", "by": "lead@example.org"}


class TestPutAndList:
    async def test_pause_is_listed_with_who_why_and_when(self, api: httpx.AsyncClient) -> None:
        before = datetime.now(UTC)
        answer = await api.put("/v1/switches/channel=whatsapp,country=in", json=PAUSE)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["scope"] == "country=IN,channel=whatsapp"
        assert (body["country"], body["channel"], body["purpose"]) == ("IN", "whatsapp", None)
        assert (body["paused"], body["reason"], body["by"]) == (
            True,
            "carrier incident",
            PAUSE["by"],
        )
        assert body["released"] == 0
        assert datetime.fromisoformat(body["changed_at"]) >= before - timedelta(seconds=1)

        listed = (await api.get("/v1/switches")).json()["data"]
        assert [s["scope"] for s in listed] == ["country=IN,channel=whatsapp"]
        assert listed[0]["by"] == PAUSE["by"]

    async def test_resume_keeps_the_switch_with_the_last_change(
        self, api: httpx.AsyncClient
    ) -> None:
        await api.put("/v1/switches/country=IN", json=PAUSE)
        answer = await api.put("/v1/switches/country=IN", json=RESUME)
        assert answer.status_code == 200
        [switch] = (await api.get("/v1/switches")).json()["data"]
        assert (switch["paused"], switch["reason"], switch["by"]) == (
            False,
            "carrier back",
            RESUME["by"],
        )

    @pytest.mark.parametrize(
        "scope", ["IN", "region=south", "country=IN,country=BD", "channel=telegram"]
    )
    async def test_a_bad_scope_is_a_422_and_stores_nothing(
        self, api: httpx.AsyncClient, scope: str
    ) -> None:
        answer = await api.put(f"/v1/switches/{scope}", json=PAUSE)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["details"][0]["field"] == "scope"
        assert (await api.get("/v1/switches")).json()["data"] == []

    @pytest.mark.parametrize(
        "body",
        [
            {"paused": True, "reason": "", "by": "x"},
            {"paused": True, "reason": "r"},
            {"paused": "maybe", "reason": "r", "by": "x"},
            {**PAUSE, "until": "tomorrow"},
        ],
    )
    async def test_a_bad_body_is_a_422(
        self, api: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        assert (await api.put("/v1/switches/all", json=body)).status_code == 422

    async def test_an_api_key_is_needed(self, api: httpx.AsyncClient) -> None:
        answer = await api.get("/v1/switches", headers={"Authorization": "Bearer nope"})
        assert answer.status_code == 401


class TestResumeReleases:
    async def test_held_notifications_are_due_at_once_unless_another_pause_holds_them(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await api.put("/v1/switches/country=IN", json=PAUSE)
        await api.put("/v1/switches/channel=sms", json=PAUSE)
        patient = await make_patient(db_session, country="IN")
        later = datetime.now(UTC) + timedelta(days=3)
        by_country = await make_notification(
            db_session, patient, due_at=later, paused_by="country=IN", failure_reason="paused"
        )
        by_sms = await make_notification(
            db_session, patient, due_at=later, paused_by="channel=sms", failure_reason="paused"
        )
        await db_session.commit()

        answer = await api.put("/v1/switches/country=IN", json=RESUME)
        assert answer.json()["released"] == 1
        released = await db_session.get(Notification, by_country.id, populate_existing=True)
        still = await db_session.get(Notification, by_sms.id, populate_existing=True)
        assert released is not None and still is not None
        assert released.paused_by is None and released.failure_reason is None
        assert released.due_at <= datetime.now(UTC)
        assert (still.paused_by, still.due_at) == ("channel=sms", later)

    async def test_the_release_looks_up_the_resumed_scopes_in_their_index(
        self, db_session: AsyncSession
    ) -> None:
        await db_session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0] for row in await db_session.execute(text("EXPLAIN " + _RELEASE.text))
        )
        assert "ix_notifications_paused_by" in plan
