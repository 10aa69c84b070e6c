"""The WhatsApp channel, both providers: against the fake WhatsApp and the fake Twilio
over real sockets, and against a tiny server of our own for answers the fakes do not give."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.channels import whatsapp
from app.channels.base import (
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    TransientChannelError,
    WhatsAppTemplateMessage,
)
from app.channels.twilio_sms import parse_status_callback
from app.channels.whatsapp import WhatsAppCloudChannel, WhatsAppTwilioChannel, parse_statuses
from app.fakes.twilio import FakeTwilioConfig, start_fake_twilio
from app.fakes.whatsapp import FakeWhatsAppConfig, start_fake_whatsapp
from tests.waiting import wait_until

CONFIG = FakeWhatsAppConfig(callback_delay=0.02)
TWILIO = FakeTwilioConfig(callback_delay=0.02)
PHONE = "+919812345675"
MASKED = "+9198******75"
NAME = "Asha Verma"
TEMPLATE = WhatsAppTemplateMessage(
    name="appointment_reminder",
    language="en_US",
    parameters=(NAME, "Civil Hospital Bathinda", "2026-12-07"),
    content_sid="HX" + "a" * 32,
)
TEXT = f"Dear {NAME}, your visit at Civil Hospital Bathinda is on 2026-12-07."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def message(
    phone: str = PHONE,
    *,
    template: WhatsAppTemplateMessage | None = TEMPLATE,
    free_text: bool = False,
    callback_url: str = "",
) -> OutgoingMessage:
    return OutgoingMessage(
        phone_e164=phone,
        text=TEXT,
        locale="en",
        title="Clinic visit",
        callback_url=callback_url,
        status_reference="41",
        whatsapp_template=template,
        free_text_allowed=free_text,
    )


@dataclass
class Webhooks:
    """Records the fake's webhooks: raw bodies and their signatures."""

    url: str = ""
    calls: list[tuple[bytes, str]] = field(default_factory=list)
    form_calls: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type == "application/x-www-form-urlencoded":
            self.form_calls.append({k: str(v) for k, v in (await request.post()).items()})
        else:
            self.calls.append(
                (await request.read(), request.headers.get(whatsapp.SIGNATURE_HEADER, ""))
            )
        return web.Response(status=200)

    def statuses(self, message_id: str | None = None) -> list[whatsapp.WhatsAppStatus]:
        """Every status received, or those of one message."""
        return [
            status
            for body, _ in self.calls
            for status in parse_statuses(body)
            if message_id is None or status.message_id == message_id
        ]


@dataclass
class Stub:
    base_url: str = ""
    handler: Handler | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(orjson.loads(await request.read()))
        assert self.handler is not None
        return await self.handler(request)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest_asyncio.fixture
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner, base = await _serve(app)
    hooks.url = f"{base}/hook"
    yield hooks
    await runner.cleanup()


@pytest_asyncio.fixture
async def fake(webhooks: Webhooks) -> AsyncIterator[str]:
    runner, port = await start_fake_whatsapp(
        FakeWhatsAppConfig(callback_delay=0.02, webhook_url=webhooks.url)
    )
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture
async def fake_twilio() -> AsyncIterator[str]:
    runner, port = await start_fake_twilio(TWILIO)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[Stub]:
    stub = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner, stub.base_url = await _serve(app)
    yield stub
    await runner.cleanup()


def cloud(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    token: str = CONFIG.access_token,
    timeout: float = 5.0,
) -> WhatsAppCloudChannel:
    return WhatsAppCloudChannel(
        base_url=base_url,
        api_version="v21.0",
        phone_number_id=CONFIG.phone_number_id,
        access_token=token,
        session=session,
        timeout=timeout,
    )


def through_twilio(session: aiohttp.ClientSession, base_url: str) -> WhatsAppTwilioChannel:
    return WhatsAppTwilioChannel(
        base_url=base_url,
        account_sid=TWILIO.account_sid,
        auth_token=TWILIO.auth_token,
        sender="+15005550006",
        session=session,
        timeout=5.0,
    )


async def configure(base_url: str, **changes: object) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/_fake/config", json=changes) as answer,
    ):
        assert answer.status == 200, await answer.text()


async def stats(base_url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_fake/stats") as answer,
    ):
        result: dict[str, Any] = await answer.json()
        return result


def assert_redacted(error: Exception) -> None:
    """Neither the number nor the text nor a parameter value anywhere in the evidence."""
    assert isinstance(error, PermanentChannelError | TransientChannelError)
    dumped = orjson.dumps(error.detail).decode() + error.message
    for secret in (PHONE, PHONE.removeprefix("+"), TEXT, NAME):
        assert secret not in dumped


class TestCloudThroughTheFake:
    @pytest.mark.asyncio
    async def test_a_template_goes_out_and_its_statuses_arrive_signed_in_order(
        self, http: aiohttp.ClientSession, fake: str, webhooks: Webhooks
    ) -> None:
        channel = cloud(http, fake)
        result = await channel.send(message())

        assert channel.name is ChannelName.WHATSAPP
        assert result.provider_message_id.startswith("wamid.")
        assert result.provider_status == "accepted"
        await wait_until(lambda: len(webhooks.statuses()) == 3)
        statuses = webhooks.statuses()
        assert [s.status for s in statuses] == ["sent", "delivered", "read"]
        assert {s.message_id for s in statuses} == {result.provider_message_id}
        assert {s.attempt_id for s in statuses} == {41}
        for body, signature in webhooks.calls:
            assert whatsapp.signature_is_valid(CONFIG.app_secret, body, signature)
            assert not whatsapp.signature_is_valid("another-secret", body, signature)
            assert not whatsapp.signature_is_valid(CONFIG.app_secret, body + b" ", signature)
        counted = await stats(fake)
        assert counted["templates"] == {"appointment_reminder": 1}
        assert counted["to"] == {PHONE: 1}

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("phone", "expected", "error_code"),
        [
            ("+919812345670", ["failed"], "131026"),
            ("+919812345671", ["sent", "delivered"], None),
            ("+919812345673", ["sent", "failed"], "131049"),
        ],
    )
    async def test_the_last_digit_steers_the_statuses(
        self,
        http: aiohttp.ClientSession,
        fake: str,
        webhooks: Webhooks,
        phone: str,
        expected: list[str],
        error_code: str | None,
    ) -> None:
        sent = await cloud(http, fake).send(message(phone))
        # A control sent after it, whose three statuses (sent, delivered, read) take at
        # least as long: once they are in, any more for the message under test would be.
        control = await cloud(http, fake).send(message("+919812345679"))
        await wait_until(lambda: len(webhooks.statuses(control.provider_message_id)) == 3)
        statuses = webhooks.statuses(sent.provider_message_id)
        assert [s.status for s in statuses] == expected
        assert statuses[-1].error_code == error_code
        if error_code:
            assert statuses[-1].normalised == "failed"
            assert (error_code in whatsapp.NO_ACCOUNT_CODES) == (error_code == "131026")

    @pytest.mark.asyncio
    async def test_statuses_due_together_share_a_webhook(
        self, http: aiohttp.ClientSession, fake: str, webhooks: Webhooks
    ) -> None:
        channel = cloud(http, fake)
        await asyncio.gather(*(channel.send(message(f"+9198123{n:03d}5")) for n in range(10)))
        await wait_until(lambda: len(webhooks.statuses()) == 30)
        assert len(webhooks.calls) < 30

    @pytest.mark.asyncio
    async def test_a_5xx_is_transient(self, http: aiohttp.ClientSession, fake: str) -> None:
        with pytest.raises(TransientChannelError) as caught:
            await cloud(http, fake).send(message("+919812345672"))
        assert caught.value.code == "131000"
        assert not caught.value.throttled

    @pytest.mark.asyncio
    async def test_without_a_template_nothing_is_requested(
        self, http: aiohttp.ClientSession, fake: str
    ) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, fake).send(message(template=None))
        assert caught.value.code == whatsapp.NO_TEMPLATE
        assert not caught.value.unexpected
        assert (await stats(fake))["requests"] == 0

    @pytest.mark.asyncio
    async def test_free_text_refused_for_reengagement_goes_as_its_template(
        self, http: aiohttp.ClientSession, fake: str
    ) -> None:
        result = await cloud(http, fake).send(message(free_text=True))
        assert result.provider_message_id.startswith("wamid.")
        assert (await stats(fake))["responses"] == {"400": 1, "200": 1}

    @pytest.mark.asyncio
    async def test_free_text_refused_without_a_template_is_permanent(
        self, http: aiohttp.ClientSession, fake: str
    ) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, fake).send(message(template=None, free_text=True))
        assert caught.value.code == whatsapp.REENGAGEMENT
        assert not caught.value.unexpected
        assert_redacted(caught.value)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("templates", "code"),
        [({"another_template": 3}, "132001"), ({"appointment_reminder": 2}, "132000")],
    )
    async def test_a_missing_or_mismatched_template_names_the_template(
        self, http: aiohttp.ClientSession, fake: str, templates: dict[str, int], code: str
    ) -> None:
        await configure(fake, templates=templates)
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, fake).send(message())
        assert caught.value.code == code
        assert caught.value.template_rejected == "appointment_reminder/en_US"
        assert code in whatsapp.TEMPLATE_REJECTED_CODES

    @pytest.mark.asyncio
    async def test_throughput_limit_pauses_the_account(
        self, http: aiohttp.ClientSession, fake: str
    ) -> None:
        await configure(fake, rate_limited_rate=1.0)
        with pytest.raises(TransientChannelError) as caught:
            await cloud(http, fake).send(message())
        assert caught.value.code == "130429"
        assert caught.value.throttled

    @pytest.mark.asyncio
    async def test_a_wrong_token_is_unexpected(
        self, http: aiohttp.ClientSession, fake: str
    ) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, fake, token="wrong").send(message())
        assert caught.value.unexpected
        assert "code 190" in caught.value.message
        assert_redacted(caught.value)


def _graph_error(code: int, status: int = 400) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        body = {"error": {"message": f"({code}) about {PHONE} and {NAME}", "code": code}}
        return web.json_response(body, status=status)

    return answer


class TestCloudAnswersTheFakeDoesNotGive:
    @pytest.mark.asyncio
    async def test_the_request_is_the_cloud_apis(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def ok(request: web.Request) -> web.Response:
            assert request.path == f"/v21.0/{CONFIG.phone_number_id}/messages"
            assert request.headers["Authorization"] == f"Bearer {CONFIG.access_token}"
            return web.json_response({"messages": [{"id": "wamid.X"}]})

        stub.handler = ok
        result = await cloud(http, stub.base_url).send(message())
        assert result.provider_message_id == "wamid.X"
        assert stub.bodies == [
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": PHONE.removeprefix("+"),
                "biz_opaque_callback_data": "41",
                "type": "template",
                "template": {
                    "name": "appointment_reminder",
                    "language": {"code": "en_US"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": value} for value in TEMPLATE.parameters
                            ],
                        }
                    ],
                },
            }
        ]

    @pytest.mark.asyncio
    async def test_not_on_whatsapp_is_permanent_and_marks_no_account(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        stub.handler = _graph_error(131026)
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, stub.base_url).send(message())
        assert caught.value.no_account
        assert not caught.value.unexpected
        assert_redacted(caught.value)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("code", [130429, 131056])
    async def test_rate_limits_are_throttling(
        self, http: aiohttp.ClientSession, stub: Stub, code: int
    ) -> None:
        stub.handler = _graph_error(code)
        with pytest.raises(TransientChannelError) as caught:
            await cloud(http, stub.base_url).send(message())
        assert caught.value.throttled
        assert caught.value.code == str(code)

    @pytest.mark.asyncio
    async def test_an_unknown_code_is_unexpected_with_the_answer(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        stub.handler = _graph_error(987654)
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, stub.base_url).send(message())
        assert caught.value.unexpected
        response = caught.value.detail["response"]
        assert isinstance(response, dict)
        assert "987654" in str(response["body"])
        assert_redacted(caught.value)

    @pytest.mark.asyncio
    async def test_success_without_an_id_may_have_been_sent(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def empty(request: web.Request) -> web.Response:
            return web.json_response({"messages": []})

        stub.handler = empty
        with pytest.raises(PermanentChannelError) as caught:
            await cloud(http, stub.base_url).send(message())
        assert caught.value.maybe_sent and caught.value.unexpected

    @pytest.mark.asyncio
    async def test_a_time_out_is_transient(self, http: aiohttp.ClientSession, stub: Stub) -> None:
        async def hang(request: web.Request) -> web.Response:
            await asyncio.Event().wait()  # until the server stops
            return web.Response()

        stub.handler = hang
        with pytest.raises(TransientChannelError) as caught:
            await cloud(http, stub.base_url, timeout=0.5).send(message())
        assert caught.value.code == "timeout"
        assert_redacted(caught.value)


class TestThroughTwilio:
    @pytest.mark.asyncio
    async def test_a_template_goes_out_as_content_and_is_read(
        self, http: aiohttp.ClientSession, fake_twilio: str, webhooks: Webhooks
    ) -> None:
        channel = through_twilio(http, fake_twilio)
        result = await channel.send(message(callback_url=webhooks.url))

        assert channel.name is ChannelName.WHATSAPP
        assert result.provider_message_id.startswith("SM")
        await wait_until(lambda: len(webhooks.form_calls) == 3)
        parsed = [parse_status_callback(params) for params in webhooks.form_calls]
        assert [p.message_status for p in parsed] == ["sent", "delivered", "read"]
        assert parsed[-1].normalised == "read"
        assert {params["To"] for params in webhooks.form_calls} == {f"whatsapp:{PHONE}"}
        assert (await stats(fake_twilio))["to"] == {f"whatsapp:{PHONE}": 1}

    @pytest.mark.asyncio
    async def test_not_on_whatsapp_fails_with_a_no_account_code(
        self, http: aiohttp.ClientSession, fake_twilio: str, webhooks: Webhooks
    ) -> None:
        await through_twilio(http, fake_twilio).send(
            message("+919812345670", callback_url=webhooks.url)
        )
        await wait_until(lambda: len(webhooks.form_calls) == 1)
        [failed] = [parse_status_callback(params) for params in webhooks.form_calls]
        assert failed.normalised == "failed"
        assert failed.error_code in whatsapp.NO_ACCOUNT_CODES

    @pytest.mark.asyncio
    async def test_a_template_without_a_content_sid_is_not_sent(
        self, http: aiohttp.ClientSession, fake_twilio: str
    ) -> None:
        cloud_only = WhatsAppTemplateMessage(name="t", language="en", parameters=("x",))
        with pytest.raises(PermanentChannelError) as caught:
            await through_twilio(http, fake_twilio).send(message(template=cloud_only))
        assert caught.value.code == whatsapp.NO_TEMPLATE
        assert "content_sid" in caught.value.message
        assert (await stats(fake_twilio))["requests"] == 0

    @pytest.mark.asyncio
    async def test_the_form_names_the_content_and_numbers_its_variables(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        forms: list[dict[str, str]] = []

        async def created(request: web.Request) -> web.Response:
            return web.json_response({"sid": "SM" + "1" * 32, "status": "queued"}, status=201)

        async def handle(request: web.Request) -> web.StreamResponse:
            forms.append({k: str(v) for k, v in (await request.post()).items()})
            return await created(request)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner, base = await _serve(app)
        try:
            await through_twilio(http, base).send(message(callback_url="http://cb/x"))
        finally:
            await runner.cleanup()
        assert forms == [
            {
                "To": f"whatsapp:{PHONE}",
                "From": "whatsapp:+15005550006",
                "ContentSid": TEMPLATE.content_sid,
                "ContentVariables": orjson.dumps(
                    {str(i): v for i, v in enumerate(TEMPLATE.parameters, start=1)}
                ).decode(),
                "StatusCallback": "http://cb/x",
            }
        ]

    @pytest.mark.asyncio
    @pytest.mark.parametrize("template", [TEMPLATE, None])
    async def test_inside_the_window_the_text_goes_as_its_body(
        self, http: aiohttp.ClientSession, template: WhatsAppTemplateMessage | None
    ) -> None:
        forms: list[dict[str, str]] = []

        async def handle(request: web.Request) -> web.StreamResponse:
            forms.append({k: str(v) for k, v in (await request.post()).items()})
            return web.json_response({"sid": "SM" + "2" * 32, "status": "queued"}, status=201)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner, base = await _serve(app)
        try:
            sent = await through_twilio(http, base).send(message(template=template, free_text=True))
        finally:
            await runner.cleanup()
        assert sent.provider_message_id == "SM" + "2" * 32
        assert forms == [{"To": f"whatsapp:{PHONE}", "From": "whatsapp:+15005550006", "Body": TEXT}]

    @pytest.mark.asyncio
    async def test_twilio_rate_limit_for_the_sender_is_throttling(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def limited(request: web.Request) -> web.Response:
            return web.json_response({"code": 63018, "message": "Rate limit"}, status=400)

        app = web.Application()
        app.router.add_post("/{tail:.*}", limited)
        runner, base = await _serve(app)
        try:
            with pytest.raises(TransientChannelError) as caught:
                await through_twilio(http, base).send(message())
        finally:
            await runner.cleanup()
        assert caught.value.throttled


class TestWebhookParsing:
    def body(self, *statuses: dict[str, Any], extra_change: bool = False) -> bytes:
        changes: list[dict[str, Any]] = [
            {"field": "messages", "value": {"statuses": list(statuses)}}
        ]
        if extra_change:
            changes.append({"field": "messages", "value": {"messages": [{"id": "in"}]}})
        return orjson.dumps(
            {"object": "whatsapp_business_account", "entry": [{"changes": changes}]}
        )

    def test_many_statuses_and_inbound_messages_skipped(self) -> None:
        body = self.body(
            {"id": "wamid.1", "status": "delivered", "biz_opaque_callback_data": "7"},
            {"id": "wamid.2", "status": "failed", "errors": [{"code": 131026, "title": "x"}]},
            extra_change=True,
        )
        first, second = parse_statuses(body)
        assert (first.message_id, first.normalised, first.attempt_id) == ("wamid.1", "delivered", 7)
        assert (second.attempt_id, second.error_code) == (None, "131026")

    def test_an_unknown_status_is_unknown(self) -> None:
        [status] = parse_statuses(self.body({"id": "wamid.1", "status": "deleted"}))
        assert status.normalised == "unknown"

    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"[]",
            b'{"object": "page", "entry": []}',
            b'{"object": "whatsapp_business_account"}',
            orjson.dumps(
                {
                    "object": "whatsapp_business_account",
                    "entry": [{"changes": [{"value": {"statuses": [{"status": "sent"}]}}]}],
                }
            ),
        ],
    )
    def test_malformed_bodies_are_value_errors(self, body: bytes) -> None:
        with pytest.raises(ValueError):
            parse_statuses(body)

    def test_signatures(self) -> None:
        body = b'{"a": 1}'
        good = whatsapp.signature("s3cret", body)
        assert good.startswith("sha256=") and len(good) == 71
        assert whatsapp.signature_is_valid("s3cret", body, good)
        assert not whatsapp.signature_is_valid("s3cret", body, good.upper())
        assert not whatsapp.signature_is_valid("s3cret", body, "")
        assert not whatsapp.signature_is_valid("", body, whatsapp.signature("", body))
