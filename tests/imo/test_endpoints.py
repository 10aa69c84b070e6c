"""The invitation endpoints through the real app, on the test's rolled-back transaction
(no worker: the rounds started here are not worked; tests/e2e/test_invitations.py runs them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.models import ImoAuthorization
from tests.factories import api_client, make_patient, running_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_app() -> AsyncIterator[FastAPI]:
    """The app with Imo configured (nothing is sent: no worker runs here)."""
    async with running_app(
        Settings(app_env="test", imo_base_url="http://127.0.0.1:9/api/simple", imo_username="u")
    ) as app:
        yield app


class TestStartRound:
    async def test_starts_a_round_and_refuses_a_second(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await make_patient(db_session)
        started = await api.post("/v1/imo/invitations/run", json={"limit": 10})
        assert started.status_code == 202, started.text
        body = started.json()
        assert (body["state"], body["trigger"], body["limit"], body["reached"]) == (
            "running",
            "api",
            10,
            0,
        )
        assert set(body["counts"].values()) == {0}

        second = await api.post("/v1/imo/invitations/run")
        assert second.status_code == 409
        error = second.json()["error"]
        assert error["code"] == "round_running"
        assert error["details"] == [{"field": "round_id", "message": str(body["id"])}]

        progress = await api.get(f"/v1/imo/invitations/runs/{body['id']}")
        assert progress.status_code == 200
        assert progress.json()["id"] == body["id"]

    async def test_a_bad_limit_is_422_naming_it(self, api: httpx.AsyncClient) -> None:
        answer = await api.post("/v1/imo/invitations/run", json={"limit": 0})
        assert answer.status_code == 422
        assert "limit" in answer.text

    async def test_without_imo_credentials_it_is_409(
        self, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        async with (
            running_app(Settings(app_env="test")) as unconfigured,
            api_client(unconfigured, db_sessionmaker) as client,
        ):
            answer = await client.post("/v1/imo/invitations/run")
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "imo_not_configured"


class TestReading:
    async def test_an_unknown_round_is_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get("/v1/imo/invitations/runs/123456789")).status_code == 404

    async def test_summary_counts_patients_by_status(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        statuses = [None, None, "invited", "subscribed", "no_imo_account"]
        for status in statuses:
            patient = await make_patient(db_session)
            if status is not None:
                db_session.add(
                    ImoAuthorization(
                        patient_id=patient.id, status=status, last_invited_at=datetime.now(UTC)
                    )
                )
        await db_session.flush()
        summary = (await api.get("/v1/imo/authorizations/summary")).json()
        assert summary == {
            "patients": 5,
            "by_status": {
                "none": 2,
                "invited": 1,
                "subscribed": 1,
                "not_subscribed": 0,
                "no_imo_account": 1,
            },
        }

    async def test_an_api_key_is_needed(self, api_app: FastAPI) -> None:
        transport = httpx.ASGITransport(app=api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as anonymous:
            for path in ("/v1/imo/authorizations/summary", "/v1/imo/invitations/runs/1"):
                assert (await anonymous.get(path)).status_code == 401
            assert (await anonymous.post("/v1/imo/invitations/run")).status_code == 401
