"""The fake WhatsApp Cloud API over a real socket: refusals, webhook delivery and
retries, faults and test hooks. (Its steering by digit is in tests/channels/test_whatsapp.py,
through the adapter.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.channels import whatsapp
from app.fakes.whatsapp import FakeWhatsAppConfig, start_fake_whatsapp
from tests.waiting import wait_until

CONFIG = FakeWhatsAppConfig()
AUTH = {"Authorization": f"Bearer {CONFIG.access_token}"}


def template(to: str = "919812345675", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {"name": "visit", "language": {"code": "en"}, "components": []},
        **extra,
    }


@dataclass
class Hook:
    url: str = ""
    answers: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(whatsapp.SIGNATURE_HEADER, "")
        assert whatsapp.signature_is_valid(CONFIG.app_secret, body, signature)
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            self.bodies.append(body)
        return web.Response(status=status)


@dataclass
class Fake:
    base_url: str

    @property
    def messages(self) -> str:
        return f"{self.base_url}/v21.0/{CONFIG.phone_number_id}/messages"


@pytest_asyncio.fixture
async def hook() -> AsyncIterator[Hook]:
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield hook
    await runner.cleanup()


@pytest_asyncio.fixture
async def fake(hook: Hook) -> AsyncIterator[Fake]:
    runner, port = await start_fake_whatsapp(
        FakeWhatsAppConfig(callback_delay=0.01, webhook_url=hook.url)
    )
    yield Fake(f"http://127.0.0.1:{port}")
    await runner.cleanup()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with session.post(url, data=orjson.dumps(body), headers=headers or AUTH) as answer:
        raw = await answer.read()
        try:
            return answer.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return answer.status, raw


class TestCustomerServiceWindow:
    @pytest.mark.asyncio
    async def test_a_patient_writing_opens_their_window_and_is_sent_signed(
        self, fake: Fake, hook: Hook, http: aiohttp.ClientSession
    ) -> None:
        text = {"messaging_product": "whatsapp", "to": "919812345675", "type": "text",
                "text": {"body": "hi"}}  # fmt: skip
        assert (await post(http, fake.messages, text))[1]["error"]["code"] == 131047
        status, answer = await post(
            http, f"{fake.base_url}/_fake/inbound", {"from": "+919812345675", "body": "আসব"}
        )
        assert (status, answer["status"]) == (200, 200)
        [body] = hook.bodies
        [message] = whatsapp.parse_messages(body)
        assert (message.sender_e164, message.text, message.provider_message_id) == (
            "+919812345675",
            "আসব",
            answer["id"],
        )
        status, sent = await post(http, fake.messages, text)
        assert status == 200 and sent["messages"][0]["id"].startswith("wamid.")
        other = {**text, "to": "919812345676"}
        assert (await post(http, fake.messages, other))[1]["error"]["code"] == 131047


class TestRefusals:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("headers", "path_id", "status", "code"),
        [
            ({"Authorization": "Bearer wrong"}, CONFIG.phone_number_id, 401, 190),
            ({}, CONFIG.phone_number_id, 401, 190),
            (AUTH, "999", 400, 100),
        ],
    )
    async def test_credentials_and_phone_number_id(
        self,
        fake: Fake,
        http: aiohttp.ClientSession,
        headers: dict[str, str],
        path_id: str,
        status: int,
        code: int,
    ) -> None:
        url = f"{fake.base_url}/v21.0/{path_id}/messages"
        async with http.post(url, data=orjson.dumps(template()), headers=headers) as answer:
            assert answer.status == status
            assert (await answer.json())["error"]["code"] == code

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"to": "1"}, 100),
            (template(to="not-a-number"), 100),
            (template(type="image"), 131051),
            ({**template(), "template": {"name": "x"}}, 131008),
            ({"messaging_product": "whatsapp", "to": "15", "type": "text"}, 131047),
        ],
    )
    async def test_payloads_it_will_not_send(
        self, fake: Fake, http: aiohttp.ClientSession, body: dict[str, Any], code: int
    ) -> None:
        status, answer = await post(http, fake.messages, body)
        assert status == 400
        assert answer["error"]["code"] == code


class TestWebhooks:
    @pytest.mark.asyncio
    async def test_retries_5xx_then_counts(
        self, fake: Fake, hook: Hook, http: aiohttp.ClientSession
    ) -> None:
        hook.answers = [503, 200]
        await post(http, fake.messages, template(to="919812345670"))
        await wait_until(lambda: len(hook.bodies) == 1)
        stats = await (await http.get(f"{fake.base_url}/_fake/stats")).json()
        assert stats["webhooks"]["sent"] == 1
        assert stats["webhooks"]["statuses"] == {"failed": 1}

    @pytest.mark.asyncio
    async def test_a_refusing_hook_is_counted_as_rejected(
        self, fake: Fake, hook: Hook, http: aiohttp.ClientSession
    ) -> None:
        hook.answers = [403]
        await post(http, fake.messages, template(to="919812345670"))

        async def rejected() -> bool:
            stats = await (await http.get(f"{fake.base_url}/_fake/stats")).json()
            return bool(stats["webhooks"]["rejected"] == {"403": 1})

        await wait_until(rejected, timeout=3, interval=0.02)


class TestHooksAndFaults:
    @pytest.mark.asyncio
    async def test_config_reset_and_bad_config(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        changed = await http.post(
            f"{fake.base_url}/_fake/config", json={"garbage_rate": 1.0, "seed": 3}
        )
        assert changed.status == 200
        assert "access_token" not in await changed.json()
        status, raw = await post(http, fake.messages, template())
        assert (status, isinstance(raw, bytes)) == (200, True)  # accepted, unreadable

        for bad in ({"garbage_rate": 2}, {"access_token": "x"}, {"templates": {"a": "b"}}):
            answer = await http.post(f"{fake.base_url}/_fake/config", json=bad)
            assert answer.status == 400, bad

        reset = await http.post(f"{fake.base_url}/_fake/reset")
        assert (await reset.json())["garbage_rate"] == 0.0
        stats = await (await http.get(f"{fake.base_url}/_fake/stats")).json()
        assert (stats["requests"], stats["accepted"]) == (0, 0)

    @pytest.mark.asyncio
    async def test_error_and_rate_limit_faults(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await http.post(f"{fake.base_url}/_fake/config", json={"error_rate": 1.0})
        status, _ = await post(http, fake.messages, template())
        assert status == 500
        await http.post(
            f"{fake.base_url}/_fake/config", json={"error_rate": 0.0, "rate_limited_rate": 1.0}
        )
        status, answer = await post(http, fake.messages, template())
        assert (status, answer["error"]["code"]) == (429, 130429)
        stats = await (await http.get(f"{fake.base_url}/_fake/stats")).json()
        assert stats["faults"] == {"error": 1, "rate_limited": 1}
        assert stats["accepted"] == 0

    def test_config_validation(self) -> None:
        with pytest.raises(ValueError, match="add up"):
            FakeWhatsAppConfig(error_rate=0.6, timeout_rate=0.6)
        with pytest.raises(ValueError, match="callback_delay"):
            FakeWhatsAppConfig(callback_delay=-1)
