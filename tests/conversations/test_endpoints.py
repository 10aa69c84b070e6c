"""Conversations through the API."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestOpenReadClose:
    async def test_open_read_and_close(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/conversations",
            json={"patient_id": patient.id, "subject": "Your visit", "reference": "a-9"},
        )
        assert answer.status_code == 201, answer.text
        opened = answer.json()
        assert (opened["state"], opened["subject"], opened["reference"]) == (
            "open",
            "Your visit",
            "a-9",
        )
        read = await api.get(f"/v1/conversations/{opened['id']}")
        assert read.status_code == 200
        assert read.json()["messages"] == [] and read.json()["next_cursor"] is None
        closed = await api.post(f"/v1/conversations/{opened['id']}/close")
        assert (closed.status_code, closed.json()["state"], closed.json()["close_reason"]) == (
            200,
            "closed",
            "api",
        )
        again = await api.post(f"/v1/conversations/{opened['id']}/close")
        assert again.json()["closed_at"] == closed.json()["closed_at"]

    async def test_an_unknown_patient_is_a_422(self, api: httpx.AsyncClient) -> None:
        answer = await api.post("/v1/conversations", json={"patient_id": "nobody", "subject": "x"})
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "patient_id"

    @pytest.mark.parametrize(
        "body", [{"subject": "x"}, {"patient_id": "p", "subject": ""}, {"patient_id": "p"}]
    )
    async def test_a_bad_body_is_a_422(self, api: httpx.AsyncClient, body: dict[str, str]) -> None:
        assert (await api.post("/v1/conversations", json=body)).status_code == 422

    async def test_an_unknown_conversation_is_a_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get(f"/v1/conversations/{uuid.uuid4()}")).status_code == 404
        assert (await api.post(f"/v1/conversations/{uuid.uuid4()}/close")).status_code == 404

    async def test_a_foreign_cursor_is_a_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        opened = await api.post(
            "/v1/conversations", json={"patient_id": patient.id, "subject": "x"}
        )
        answer = await api.get(f"/v1/conversations/{opened.json()['id']}?cursor=bm90IGl0")
        assert answer.status_code == 422
