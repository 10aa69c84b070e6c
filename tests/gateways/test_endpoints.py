"""/v1/gateways and `notify gateways create`: registering phones, listing them."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.gateways import repository as gateway_repository
from app.gateways import service as gateway_service
from tests.gateways.conftest import Phone, queue_message

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_created_gateway_authenticates_with_its_secret_shown_once(
    api: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    response = await api.post(
        "/v1/gateways", json={"name": "dhaka-1", "country": "bd", "number": "+8801711999999"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["country"] == "BD" and created["number"] == "+8801711999999"
    secret = created["secret"]
    assert await gateway_service.authenticate(db_session, "dhaka-1", secret) is not None
    assert await gateway_service.authenticate(db_session, "dhaka-1", secret + "x") is None
    listed = (await api.get("/v1/gateways")).json()["data"]
    assert [g["name"] for g in listed] == ["dhaka-1"]
    assert "secret" not in listed[0]
    # Stored hashed.
    gateway = await gateway_repository.by_name(db_session, "dhaka-1")
    assert gateway is not None and secret not in gateway.secret_hash


async def test_a_taken_name_is_409_and_bad_fields_422(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/gateways", json={"name": "one"})).status_code == 201
    assert (await api.post("/v1/gateways", json={"name": "one"})).status_code == 409
    for body in ({"name": "a:b"}, {"name": "x", "country": "BGD"}, {"name": "y", "number": "17"}):
        assert (await api.post("/v1/gateways", json=body)).status_code == 422, body


async def test_a_name_taken_by_a_racing_request_is_409_not_500(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found auditing issue 11: eight identical registrations at once were one 201, one
    # 409 and six 500s (the unique constraint, after each had checked the name was free).
    assert (await api.post("/v1/gateways", json={"name": "racing"})).status_code == 201

    async def free(*_: object) -> bool:
        return False  # as a racing request, which checked before the first committed

    monkeypatch.setattr(gateway_repository, "name_taken", free)
    answer = await api.post("/v1/gateways", json={"name": "racing"})
    assert answer.status_code == 409, answer.text
    assert [g["name"] for g in (await api.get("/v1/gateways")).json()["data"]] == ["racing"]


async def test_the_list_shows_queue_depth_and_counts(
    api: httpx.AsyncClient, phone: Phone, db_session: AsyncSession
) -> None:
    _, first = await queue_message(db_session)
    await queue_message(db_session)
    await db_session.commit()
    await phone.poll()
    await phone.poll({"updates": [{"id": first.provider_message_id, "status": "SENT"}]})
    listed = (await api.get("/v1/gateways")).json()["data"]
    mine = next(g for g in listed if g["id"] == phone.gateway.id)
    assert mine["queue_depth"] == 1
    assert mine["counts"] == {"forwarded-to-gateway": 1, "sent": 1}
    assert mine["last_polled_at"] is not None


async def test_the_attempts_state_history_is_visible_in_the_api(
    api: httpx.AsyncClient, phone: Phone, db_session: AsyncSession
) -> None:
    notification, attempt = await queue_message(db_session)
    await db_session.commit()
    await phone.poll()
    await phone.poll({"updates": [{"id": attempt.provider_message_id, "status": "UNSENT"}]})
    body = (await api.get(f"/v1/notifications/{notification.id}")).json()
    [shown] = [a for a in body["attempts"] if a["channel"] == "gateway"]
    assert [h["state"] for h in shown["state_history"]] == [
        "forwarded-to-gateway",
        "received-by-gateway",
    ]
