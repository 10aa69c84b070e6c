"""The Twilio SMS adapter: against the fake Twilio over a real socket, and against a tiny
server of our own for the answers the fake does not give."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.channels import twilio_signature
from app.channels.base import (
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    TransientChannelError,
)
from app.channels.twilio_sms import (
    TwilioSmsChannel,
    TwilioStatus,
    normalised_status,
    parse_status_callback,
)
from app.fakes.twilio import FakeTwilioConfig, start_fake_twilio
from tests.waiting import wait_until

CONFIG = FakeTwilioConfig(callback_delay=0.03)
SENDERS = ("+15005550001", "+15005550002", "+15005550003")
PHONE = "+8801711000001"
TEXT = "আপনার ক্লিনিকে যাওয়ার দিন আগামীকাল"
MASKED = "+88017******01"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def message(phone: str = PHONE, *, reference: str = "", callback_url: str = "") -> OutgoingMessage:
    return OutgoingMessage(
        phone_e164=phone,
        text=TEXT,
        locale="bn-BD",
        title="Clinic visit",
        callback_url=callback_url,
        reference=reference,
    )


@dataclass
class Server:
    """A loopback aiohttp server: the fake Twilio, a callback receiver or a stub."""

    base_url: str
    runner: web.AppRunner


async def serve(app: web.Application) -> Server:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Server(f"http://127.0.0.1:{runner.addresses[0][1]}", runner)


@dataclass
class Receiver:
    """Records status callbacks by the URL they were sent to."""

    base_url: str = ""
    calls: list[tuple[str, dict[str, str], str | None]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        self.calls.append((str(request.url), params, request.headers.get("X-Twilio-Signature")))
        return web.Response(status=204)

    def url(self, name: str) -> str:
        return f"{self.base_url}/callbacks/twilio/status/{name}?t=abc"

    def for_url(self, url: str) -> list[dict[str, str]]:
        return [params for called, params, _ in self.calls if called == url]


@dataclass
class Stub:
    """A server whose every answer is `handler`; `release` frees hung handlers."""

    base_url: str = ""
    handler: Handler | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.requests.append({k: str(v) for k, v in form.items()})
        assert self.handler is not None
        return await self.handler(request)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[Server]:
    runner, port = await start_fake_twilio(CONFIG)
    yield Server(f"http://127.0.0.1:{port}", runner)
    await runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/callbacks/twilio/status/{name}", receiver.handle)
    server = await serve(app)
    receiver.base_url = server.base_url
    yield receiver
    await server.runner.cleanup()


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[Stub]:
    stub = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    server = await serve(app)
    stub.base_url = server.base_url
    yield stub
    stub.release.set()
    await server.runner.cleanup()


def channel(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    auth_token: str = CONFIG.auth_token,
    timeout: float = 2.0,
) -> TwilioSmsChannel:
    return TwilioSmsChannel(
        base_url=base_url,
        account_sid=CONFIG.account_sid,
        auth_token=auth_token,
        senders=SENDERS,
        session=session,
        timeout=timeout,
    )


async def fake_stats(session: aiohttp.ClientSession, fake: Server) -> dict[str, object]:
    async with session.get(f"{fake.base_url}/_fake/stats") as response:
        result: dict[str, object] = await response.json()
        return result


def assert_redacted(detail: dict[str, object]) -> None:
    """The number appears only masked and the text not at all, anywhere in `detail`."""
    dumped = orjson.dumps(detail).decode()
    assert PHONE not in dumped
    assert PHONE.removeprefix("+") not in dumped
    assert TEXT not in dumped
    request = detail["request"]
    assert isinstance(request, dict)
    assert request["To"] == MASKED
    assert request["Body"] == {"length": len(TEXT)}


class TestSendingThroughTheFake:
    @pytest.mark.asyncio
    async def test_accepted_message_gives_sid_and_status(
        self, http: aiohttp.ClientSession, fake: Server
    ) -> None:
        sms = channel(http, fake.base_url)

        result = await sms.send(message())

        assert sms.name is ChannelName.SMS
        assert sms.base_url == fake.base_url
        assert result.provider_message_id.startswith("SM")
        assert len(result.provider_message_id) == 34
        assert result.provider_status == "queued"

    @pytest.mark.asyncio
    async def test_senders_are_used_in_turn(
        self, http: aiohttp.ClientSession, fake: Server
    ) -> None:
        sms = channel(http, fake.base_url)

        for i in range(6):
            await sms.send(message(f"+88017110{i:04d}1"))

        assert (await fake_stats(http, fake))["from"] == {sender: 2 for sender in SENDERS}

    @pytest.mark.asyncio
    async def test_invalid_number_is_permanent_and_marks_the_recipient(
        self, http: aiohttp.ClientSession, fake: Server
    ) -> None:
        bad = "+8801711000008"

        with pytest.raises(PermanentChannelError) as caught:
            await channel(http, fake.base_url).send(message(bad))

        error = caught.value
        assert error.recipient_invalid
        assert not error.unexpected
        assert error.code == "21211"
        assert error.provider_status == "400"
        dumped = orjson.dumps(error.detail).decode()
        assert bad not in dumped and bad[1:] not in dumped and bad not in str(error)
        assert "+88017******08" in dumped

    @pytest.mark.asyncio
    async def test_wrong_credentials_are_permanent(
        self, http: aiohttp.ClientSession, fake: Server
    ) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await channel(http, fake.base_url, auth_token="wrong").send(message())

        assert caught.value.code == "20003"
        assert not caught.value.recipient_invalid

    @pytest.mark.asyncio
    async def test_rate_limit_is_transient_with_retry_after(
        self, http: aiohttp.ClientSession, fake: Server
    ) -> None:
        async with http.post(f"{fake.base_url}/_fake/config", json={"rate_limited_rate": 1}):
            pass

        with pytest.raises(TransientChannelError) as caught:
            await channel(http, fake.base_url).send(message())

        assert caught.value.code == "20429"
        assert caught.value.retry_after == 1.0


class TestStatusCallbacksFromTheFake:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("phone", "statuses", "error_code", "normalised"),
        [
            ("+8801711000001", ["sent", "delivered"], None, "delivered"),
            ("+8801711000007", ["sent", "failed"], "30006", "failed"),
            ("+8801711000006", ["sent", "undelivered"], "30003", "failed"),
        ],
    )
    async def test_statuses_arrive_signed(
        self,
        http: aiohttp.ClientSession,
        fake: Server,
        receiver: Receiver,
        phone: str,
        statuses: list[str],
        error_code: str | None,
        normalised: str,
    ) -> None:
        url = receiver.url("n-1")

        result = await channel(http, fake.base_url).send(message(phone, callback_url=url))

        await wait_until(lambda: len(receiver.calls) == 2)
        parsed = [parse_status_callback(params) for params in receiver.for_url(url)]
        assert [p.message_status for p in parsed] == statuses
        assert {p.message_sid for p in parsed} == {result.provider_message_id}
        assert parsed[-1].error_code == error_code
        assert normalised_status(parsed[-1].message_status) == normalised
        token = CONFIG.auth_token
        for called, params, signature in receiver.calls:
            assert called == url
            assert twilio_signature.is_valid(token, url, params, signature)
            assert not twilio_signature.is_valid(token, url, {**params, "To": "+1"}, signature)
            assert not twilio_signature.is_valid(token, url, {**params, "Extra": "1"}, signature)
            assert not twilio_signature.is_valid(token, url + "x", params, signature)
            assert not twilio_signature.is_valid(
                token, url.replace("n-1", "n-2"), params, signature
            )
            assert not twilio_signature.is_valid("other-token", url, params, signature)
            assert not twilio_signature.is_valid(token, url, params, "")
            assert not twilio_signature.is_valid(token, url, params, None)


class TestAnswersTheFakeDoesNotGive:
    @pytest.mark.asyncio
    async def test_time_out_is_transient(self, http: aiohttp.ClientSession, stub: Stub) -> None:
        async def hang(request: web.Request) -> web.Response:
            await stub.release.wait()
            return web.Response(status=201)

        stub.handler = hang

        with pytest.raises(TransientChannelError) as caught:
            await channel(http, stub.base_url, timeout=0.1).send(message())

        assert caught.value.code == "timeout"
        assert_redacted(caught.value.detail)

    @pytest.mark.asyncio
    async def test_429_without_twilio_body_is_transient_with_retry_after(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def limited(request: web.Request) -> web.Response:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})

        stub.handler = limited

        with pytest.raises(TransientChannelError) as caught:
            await channel(http, stub.base_url).send(message())

        assert caught.value.code == "429"
        assert caught.value.retry_after == 7.0

    @pytest.mark.asyncio
    async def test_503_is_transient(self, http: aiohttp.ClientSession, stub: Stub) -> None:
        async def unavailable(request: web.Request) -> web.Response:
            return web.Response(status=503, text="<html>Service Unavailable</html>")

        stub.handler = unavailable

        with pytest.raises(TransientChannelError) as caught:
            await channel(http, stub.base_url).send(message())

        assert caught.value.code == "http_5xx"
        assert caught.value.retry_after is None
        assert caught.value.detail["response"] == {
            "status": 503,
            "body": "<html>Service Unavailable</html>",
        }

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "body",
        [
            b"<html>OK</html>",
            b"",
            b"[1, 2]",
            orjson.dumps({"status": "queued", "to": PHONE, "body": TEXT}),
            orjson.dumps({"sid": None, "status": "queued"}),
        ],
    )
    async def test_success_without_a_readable_sid_is_unexpected_and_maybe_sent(
        self, http: aiohttp.ClientSession, stub: Stub, body: bytes
    ) -> None:
        async def accepted(request: web.Request) -> web.Response:
            return web.Response(status=201, body=body, content_type="application/json")

        stub.handler = accepted

        with pytest.raises(PermanentChannelError) as caught:
            await channel(http, stub.base_url).send(message())

        assert caught.value.unexpected and caught.value.maybe_sent
        assert caught.value.code == "unexpected"
        assert not caught.value.recipient_invalid
        assert_redacted(caught.value.detail)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("code", "recipient_invalid", "opted_out"),
        [
            (21610, False, True),
            (21408, False, False),
            (21614, True, False),
            (99999, False, False),
        ],
    )
    async def test_4xx_with_a_twilio_code_is_permanent(
        self,
        http: aiohttp.ClientSession,
        stub: Stub,
        code: int,
        recipient_invalid: bool,
        opted_out: bool,
    ) -> None:
        async def refused(request: web.Request) -> web.Response:
            error = {
                "code": code,
                "message": f"Message to {PHONE} saying '{TEXT}' refused",
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": 400,
            }
            # ensure_ascii-style escapes, as many JSON encoders write them.
            return web.Response(status=400, text=json.dumps(error))

        stub.handler = refused

        with pytest.raises(PermanentChannelError) as caught:
            await channel(http, stub.base_url).send(message())

        error = caught.value
        assert error.code == str(code)
        assert error.recipient_invalid is recipient_invalid
        assert error.opted_out is opted_out
        assert not error.unexpected
        assert PHONE not in str(error) and TEXT not in str(error)
        assert_redacted(error.detail)
        response = error.detail["response"]
        assert isinstance(response, dict)
        assert MASKED in response["body"]
        assert f"<text: {len(TEXT)} chars>" in response["body"]

    @pytest.mark.asyncio
    async def test_4xx_without_a_twilio_code_is_unexpected(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def not_found(request: web.Request) -> web.Response:
            return web.Response(status=404, text="x" * 5000)

        stub.handler = not_found

        with pytest.raises(PermanentChannelError) as caught:
            await channel(http, stub.base_url).send(message())

        assert caught.value.unexpected
        response = caught.value.detail["response"]
        assert isinstance(response, dict)
        assert response == {"status": 404, "body": "x" * 2000}

    @pytest.mark.asyncio
    async def test_the_request_is_twilios_form_with_basic_auth(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        seen: list[web.Request] = []

        async def accepted(request: web.Request) -> web.Response:
            seen.append(request)
            return web.json_response({"sid": "SM1", "status": "queued"}, status=201)

        stub.handler = accepted
        url = "https://clinic.example/callbacks/twilio/status/n-9"

        result = await channel(http, stub.base_url + "/").send(message(callback_url=url))

        assert (result.provider_message_id, result.provider_status) == ("SM1", "queued")
        assert seen[0].path == f"/2010-04-01/Accounts/{CONFIG.account_sid}/Messages.json"
        assert seen[0].headers["Authorization"].startswith("Basic ")
        assert stub.requests == [
            {"To": PHONE, "From": SENDERS[0], "Body": TEXT, "StatusCallback": url}
        ]

    @pytest.mark.asyncio
    async def test_a_reference_keeps_its_sender_across_channels(
        self, http: aiohttp.ClientSession, stub: Stub
    ) -> None:
        async def accepted(request: web.Request) -> web.Response:
            return web.json_response({"sid": "SM1", "status": "queued"}, status=201)

        stub.handler = accepted
        first, second = channel(http, stub.base_url), channel(http, stub.base_url)

        for sms in (first, second, first, second):
            await sms.send(message(reference="notification-42"))
        kept = {request["From"] for request in stub.requests}
        for i in range(30):
            await first.send(message(reference=f"notification-{i}"))

        assert len(kept) == 1
        assert {request["From"] for request in stub.requests} == set(SENDERS)

    @pytest.mark.asyncio
    async def test_connection_refused_is_transient(self, http: aiohttp.ClientSession) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        with pytest.raises(TransientChannelError) as caught:
            await channel(http, f"http://127.0.0.1:{port}").send(message())

        assert caught.value.code == "connection_error"
        assert_redacted(caught.value.detail)


class TestStatusCallbackParsing:
    def test_parses_a_failure(self) -> None:
        status = parse_status_callback(
            {
                "MessageSid": "SM1",
                "MessageStatus": "undelivered",
                "ErrorCode": "30003",
                "ErrorMessage": "Unreachable destination handset",
            }
        )

        assert status == TwilioStatus(
            "SM1", "undelivered", "30003", "Unreachable destination handset"
        )
        assert normalised_status(status.message_status) == "failed"

    def test_empty_error_code_is_none(self) -> None:
        status = parse_status_callback(
            {"MessageSid": "SM1", "MessageStatus": "sent", "ErrorCode": ""}
        )

        assert status.error_code is None

    @pytest.mark.parametrize(
        "params",
        [
            {"MessageStatus": "sent"},
            {"MessageSid": "SM1"},
            {"MessageSid": "", "MessageStatus": "x"},
        ],
    )
    def test_missing_sid_or_status_is_a_value_error(self, params: dict[str, str]) -> None:
        with pytest.raises(ValueError):
            parse_status_callback(params)

    @pytest.mark.parametrize(
        ("twilio", "normalised"),
        [
            ("accepted", "sending"),
            ("queued", "sending"),
            ("sending", "sending"),
            ("sent", "sent"),
            ("delivered", "delivered"),
            ("read", "read"),
            ("failed", "failed"),
            ("undelivered", "failed"),
            ("receiving", "unknown"),
            ("", "unknown"),
        ],
    )
    def test_normalised_status(self, twilio: str, normalised: str) -> None:
        assert normalised_status(twilio) == normalised


class TestSignatures:
    def test_sign_matches_twilios_documented_example(self) -> None:
        # From Twilio's webhook security documentation.
        params = {
            "CallSid": "CA1234567890ABCDE",
            "Caller": "+14158675309",
            "Digits": "1234",
            "From": "+14158675309",
            "To": "+18005551212",
        }
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"

        assert twilio_signature.sign("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        assert twilio_signature.is_valid("12345", url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")

    def test_default_port_may_be_signed_or_not(self) -> None:
        params = {"MessageSid": "SM1"}
        signed_with_port = twilio_signature.sign("t", "https://clinic.example:443/cb", params)

        assert twilio_signature.is_valid("t", "https://clinic.example/cb", params, signed_with_port)

    def test_non_ascii_signature_is_invalid_not_an_error(self) -> None:
        assert not twilio_signature.is_valid("t", "https://x/cb", {}, "ß")
