"""Webhook endpoints through the API: subscribe, replay, and the URLs refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.errors import InvalidInput
from app.webhooks.urls import check_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

PUBLIC = "https://93.184.215.14/hooks/clinic"


def name() -> str:
    return f"clinic-{uuid.uuid4().hex[:8]}"


class TestPut:
    async def test_created_with_its_secret_once_then_replaced(self, api: httpx.AsyncClient) -> None:
        endpoint = name()
        body: dict[str, Any] = {"url": PUBLIC, "events": ["message.received"]}
        created = await api.put(f"/v1/webhooks/{endpoint}", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["secret"].startswith("whsec_")
        assert created.json()["active"] is True
        body["events"] = ["consent.changed", "message.received", "consent.changed"]
        replaced = await api.put(f"/v1/webhooks/{endpoint}", json=body)
        assert replaced.status_code == 200
        assert replaced.json()["secret"] is None
        assert replaced.json()["events"] == ["consent.changed", "message.received"]

    @pytest.mark.parametrize(
        "body",
        [
            {"url": PUBLIC, "events": []},
            {"url": PUBLIC, "events": ["notification.teleported"]},
            {"url": "ftp://93.184.215.14/x", "events": ["message.received"]},
            {"url": "http://127.0.0.1:9000/hook", "events": ["message.received"]},
            {"url": "http://10.1.2.3/hook", "events": ["message.received"]},
            {"url": "http://169.254.169.254/latest", "events": ["message.received"]},
            {"url": "http://[::1]/hook", "events": ["message.received"]},
            {"url": "https://user:pw@93.184.215.14/", "events": ["message.received"]},
            {"url": PUBLIC, "events": ["message.received"], "extra": 1},
        ],
    )
    async def test_refused(self, api: httpx.AsyncClient, body: dict[str, Any]) -> None:
        answer = await api.put(f"/v1/webhooks/{name()}", json=body)
        assert answer.status_code == 422, answer.text

    async def test_a_bad_name_is_a_422(self, api: httpx.AsyncClient) -> None:
        body = {"url": PUBLIC, "events": ["message.received"]}
        assert (await api.put("/v1/webhooks/Not%20A%20Name", json=body)).status_code == 422


class TestUrls:
    async def test_private_addresses_pass_only_when_allowed(self) -> None:
        await check_url(
            "http://127.0.0.1:9/x", Settings(app_env="test", webhook_allow_private=True)
        )
        with pytest.raises(InvalidInput):
            await check_url("http://localhost:9/x", Settings(app_env="test"))

    async def test_production_wants_https(self) -> None:
        production = Settings.model_construct(app_env="production", webhook_allow_private=True)
        with pytest.raises(InvalidInput):
            await check_url("http://93.184.215.14/x", production)
        await check_url(PUBLIC, production)


class TestReplay:
    async def test_unknown_endpoint_and_bad_period(self, api: httpx.AsyncClient) -> None:
        now = datetime.now(UTC)
        period = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}
        assert (await api.post(f"/v1/webhooks/{name()}/replay", json=period)).status_code == 404
        backwards = {"since": period["until"], "until": period["since"]}
        answer = await api.post(f"/v1/webhooks/{name()}/replay", json=backwards)
        assert answer.status_code == 422
