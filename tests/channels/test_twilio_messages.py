"""Twilio's Messages API, shared by SMS and WhatsApp through Twilio: message look-ups
(`fetch_status`), against the fake Twilio over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from app.channels.base import (
    MessageNotFound,
    OutgoingMessage,
    PermanentChannelError,
    ProviderStatus,
    StatusLookup,
    TransientChannelError,
    WhatsAppTemplateMessage,
)
from app.channels.imo import ImoChannel
from app.channels.twilio_sms import TwilioSmsChannel
from app.channels.whatsapp import WhatsAppCloudChannel, WhatsAppTwilioChannel
from app.fakes.twilio import FakeTwilioConfig, start_fake_twilio
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACCOUNT = FakeTwilioConfig().account_sid
TOKEN = FakeTwilioConfig().auth_token


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    runner, port = await start_fake_twilio(
        FakeTwilioConfig(callbacks_enabled=False, callback_delay=0.05)
    )
    async with aiohttp.ClientSession() as session:
        yield f"http://127.0.0.1:{port}", session
    await runner.cleanup()


def channel(fake: tuple[str, aiohttp.ClientSession], token: str = TOKEN) -> TwilioSmsChannel:
    base_url, session = fake
    return TwilioSmsChannel(
        base_url=base_url,
        account_sid=ACCOUNT,
        auth_token=token,
        senders=["+15005550006"],
        session=session,
        timeout=2.0,
    )


async def configure(fake: tuple[str, aiohttp.ClientSession], **changes: Any) -> None:
    base_url, session = fake
    async with session.post(f"{base_url}/_fake/config", json=changes) as answer:
        assert answer.status == 200


async def send(sms: TwilioSmsChannel, phone: str) -> str:
    result = await sms.send(
        OutgoingMessage(phone_e164=phone, text="hello", locale="en", title="t", callback_url="")
    )
    return result.provider_message_id


async def final_status(
    lookup: StatusLookup, sid: str, final: str = "failed"
) -> ProviderStatus | None:
    """The message's status once it is `final`; None before."""
    found = await lookup.fetch_status(sid)
    return found if found.status == final else None


class TestFetchStatus:
    async def test_a_message_walks_from_queued_to_its_final_status(
        self, fake: tuple[str, aiohttp.ClientSession]
    ) -> None:
        sms = channel(fake)
        sid = await send(sms, "+8801711000003")
        seen: list[str] = []

        async def final() -> ProviderStatus | None:
            found = await sms.fetch_status(sid)
            assert found.provider_message_id == sid
            if not seen or seen[-1] != found.provider_status:
                seen.append(found.provider_status)
            return found if found.status == "delivered" else None

        delivered = await wait_until(final)
        assert (delivered.provider_status, delivered.error_code) == ("delivered", None)
        # In order, never back: queued (`sending`), sent, delivered.
        walk = ["queued", "sent", "delivered"]
        assert seen == sorted(seen, key=walk.index)

    @pytest.mark.parametrize(
        ("digit", "provider_status", "code"),
        [("7", "failed", "30006"), ("6", "undelivered", "30003")],
    )
    async def test_a_failure_carries_its_error_code(
        self, fake: tuple[str, aiohttp.ClientSession], digit: str, provider_status: str, code: str
    ) -> None:
        sms = channel(fake)
        sid = await send(sms, "+880171100000" + digit)
        found = await wait_until(lambda: final_status(sms, sid))
        assert (found.status, found.provider_status, found.error_code) == (
            "failed",
            provider_status,
            code,
        )

    async def test_an_unknown_sid_is_not_found(
        self, fake: tuple[str, aiohttp.ClientSession]
    ) -> None:
        with pytest.raises(MessageNotFound) as raised:
            await channel(fake).fetch_status("SM" + "0" * 32)
        assert raised.value.code == "20404"

    async def test_what_is_not_a_sid_is_not_asked_for(
        self, fake: tuple[str, aiohttp.ClientSession]
    ) -> None:
        with pytest.raises(MessageNotFound) as raised:
            await channel(fake).fetch_status("../../Accounts.json")
        assert raised.value.code == "not_a_sid"

    async def test_wrong_credentials_are_unexpected(
        self, fake: tuple[str, aiohttp.ClientSession]
    ) -> None:
        sid = await send(channel(fake), "+8801711000003")
        with pytest.raises(PermanentChannelError) as raised:
            await channel(fake, token="wrong").fetch_status(sid)
        assert raised.value.unexpected and raised.value.provider_status == "401"
        # The report for Sentry carries no number or text of the patient's.
        assert "+880" not in str(raised.value.detail) and "hello" not in str(raised.value.detail)

    @pytest.mark.parametrize(
        ("fault", "error"),
        [
            ("rate_limited_rate", TransientChannelError),
            ("error_rate", TransientChannelError),
            ("garbage_rate", PermanentChannelError),
        ],
    )
    async def test_faults_are_mapped(
        self, fake: tuple[str, aiohttp.ClientSession], fault: str, error: type[Exception]
    ) -> None:
        sms = channel(fake)
        sid = await send(sms, "+8801711000003")
        await configure(fake, **{fault: 1.0})
        try:
            with pytest.raises(error):
                await sms.fetch_status(sid)
        finally:
            await configure(fake, **{fault: 0.0})


class TestWhatsAppThroughTwilio:
    @pytest.mark.parametrize(
        ("digit", "status", "provider_status", "code"),
        [
            ("5", "read", "read", None),
            ("1", "delivered", "delivered", None),
            ("0", "failed", "failed", "63003"),
        ],
    )
    async def test_a_whatsapp_message_is_looked_up_the_same_way(
        self,
        fake: tuple[str, aiohttp.ClientSession],
        digit: str,
        status: str,
        provider_status: str,
        code: str | None,
    ) -> None:
        base_url, session = fake
        whatsapp = WhatsAppTwilioChannel(
            base_url=base_url,
            account_sid=ACCOUNT,
            auth_token=TOKEN,
            sender="+15005550006",
            session=session,
            timeout=2.0,
        )
        template = WhatsAppTemplateMessage(
            name="appointment_reminder",
            language="en",
            parameters=("x",),
            content_sid="HX" + "a" * 32,
        )
        sent = await whatsapp.send(
            OutgoingMessage(
                phone_e164="+91981234567" + digit,
                text="hello",
                locale="en",
                title="t",
                callback_url="",
                whatsapp_template=template,
            )
        )
        found = await wait_until(lambda: final_status(whatsapp, sent.provider_message_id, status))
        assert (found.status, found.provider_status, found.error_code) == (
            status,
            provider_status,
            code,
        )


class TestCapability:
    async def test_what_twilio_carries_looks_up_and_the_rest_does_not(self) -> None:
        assert issubclass(TwilioSmsChannel, StatusLookup)
        assert issubclass(WhatsAppTwilioChannel, StatusLookup)
        assert not issubclass(ImoChannel, StatusLookup)
        assert not issubclass(WhatsAppCloudChannel, StatusLookup)
