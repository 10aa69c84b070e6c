"""The Imo adapter against the fake Imo over a real socket, and against scripted servers."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.channels.base import (
    ChannelName,
    Invitation,
    InvitationResult,
    OutgoingMessage,
    PermanentChannelError,
    TransientChannelError,
)
from app.channels.imo import ImoChannel
from app.fakes.imo import FakeImoConfig, base_url, start_fake_imo
from app.logs import mask_phone

USERNAME = "clinic"
PASSWORD = "s3cret-pass"
CALLBACK_DELAY = 0.05
TEXT = "Your next visit to Dhaka Medical is on 01-12-2026, Rahim"
NAME = "Rahim Uddin"
TOKEN = "tok_" + "a" * 40


def phone(last_digit: int) -> str:
    return f"+88017110000{last_digit}{last_digit}"


def message(number: str, callback_url: str = "http://127.0.0.1:9/cb") -> OutgoingMessage:
    return OutgoingMessage(
        phone_e164=number,
        text=TEXT,
        locale="en",
        title="Appointment Reminder",
        callback_url=callback_url,
        recipient_name=NAME,
        action="Official Website",
        action_url="https://www.nhf.org.bd",
    )


def invitation(number: str, callback_url: str = "http://127.0.0.1:9/cb") -> Invitation:
    return Invitation(
        phone_e164=number,
        text=TEXT,
        title="Invitation",
        action="Accept",
        recipient_name=NAME,
        callback_url=callback_url,
    )


def assert_redacted(error: Exception, number: str) -> dict[str, Any]:
    assert isinstance(error, TransientChannelError | PermanentChannelError)
    evidence = orjson.dumps(error.detail).decode()
    for secret in (number, number.lstrip("+"), TEXT, NAME, TOKEN):
        assert secret not in evidence
        assert secret not in str(error)
    assert mask_phone(number) in evidence
    assert error.detail["request"]["body"]["msg_length"] == len(TEXT)  # type: ignore[index]
    return error.detail


@dataclass
class Receiver:
    """A tiny service stand-in that records every callback it is sent."""

    port: int = 0
    received: asyncio.Queue[tuple[str, str, dict[str, str]]] = field(default_factory=asyncio.Queue)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/cb/{name}/{TOKEN}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        await self.received.put((request.match_info["name"], request.content_type, body))
        return web.Response(text="ok")

    async def next(self) -> tuple[str, str, dict[str, str]]:
        return await asyncio.wait_for(self.received.get(), timeout=2)


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/cb/{name}/{token}", receiver.handle)
    runner, receiver.port = await serve(app)
    yield receiver
    await runner.cleanup()


@pytest_asyncio.fixture
async def fake_imo_url() -> AsyncIterator[str]:
    config = FakeImoConfig(
        username=USERNAME, password=PASSWORD, callback_delay=CALLBACK_DELAY, seed=1
    )
    runner, port = await start_fake_imo(config, port=0)
    yield base_url(port)
    await runner.cleanup()


@pytest.fixture
def imo(fake_imo_url: str, http: aiohttp.ClientSession) -> ImoChannel:
    return ImoChannel(
        base_url=fake_imo_url, username=USERNAME, password=PASSWORD, session=http, timeout=2
    )


class TestMaskPhone:
    @pytest.mark.parametrize(
        ("number", "masked"),
        [
            ("+8801711000001", "+88017******01"),
            ("+14155550123", "+141******23"),
            ("+447700900123", "+4477******23"),
            ("01711000001", "*********01"),
            ("+8801234", "+880**34"),
            ("", ""),
        ],
    )
    def test_masks(self, number: str, masked: str) -> None:
        assert mask_phone(number) == masked


class TestNotificationAgainstFake:
    @pytest.mark.asyncio
    async def test_no_imo_account_is_permanent(self, imo: ImoChannel) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await imo.send(message(phone(0)))
        assert caught.value.code == "nonexistent_user"
        assert caught.value.provider_status == "nonexistent_user"
        assert not caught.value.unexpected
        assert_redacted(caught.value, phone(0))

    @pytest.mark.asyncio
    async def test_not_subscribed_is_permanent(self, imo: ImoChannel) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            await imo.send(message(phone(1)))
        assert caught.value.code == "not_subscribed"
        assert not caught.value.unexpected

    @pytest.mark.asyncio
    async def test_misbehaving_imo_is_transient(self, imo: ImoChannel) -> None:
        with pytest.raises(TransientChannelError) as caught:
            await imo.send(message(phone(2)))
        assert caught.value.code == "http_5xx"
        assert caught.value.detail["response"]["status"] == 500  # type: ignore[index]
        assert_redacted(caught.value, phone(2))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("digit", range(3, 10))
    async def test_sent_with_a_post_id(self, imo: ImoChannel, digit: int) -> None:
        first = await imo.send(message(phone(digit)))
        second = await imo.send(message(phone(digit)))
        assert first.provider_status == "success"
        assert first.provider_message_id
        assert first.provider_message_id != second.provider_message_id

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("digit", "content_type"),
        [(3, "application/json"), (4, "application/x-www-form-urlencoded")],
    )
    async def test_read_receipt_arrives(
        self, imo: ImoChannel, receiver: Receiver, digit: int, content_type: str
    ) -> None:
        sent = await imo.send(message(phone(digit), receiver.url("read")))
        name, received_type, body = await receiver.next()
        assert (name, received_type) == ("read", content_type)
        assert body == {"event": "read_receipt", "post_id": sent.provider_message_id}

    @pytest.mark.asyncio
    async def test_unread_gives_no_signal(self, imo: ImoChannel, receiver: Receiver) -> None:
        await imo.send(message(phone(7), receiver.url("unread")))
        # A control sent after it, that is read: once its receipt is in, one for the
        # unread message would have come too.
        await imo.send(message(phone(3), receiver.url("read")))
        name, _, _ = await receiver.next()
        assert name == "read"
        assert receiver.received.empty()

    @pytest.mark.asyncio
    async def test_wrong_credentials_are_unexpected(
        self, fake_imo_url: str, http: aiohttp.ClientSession
    ) -> None:
        imo = ImoChannel(
            base_url=fake_imo_url, username=USERNAME, password="wrong", session=http, timeout=2
        )
        with pytest.raises(PermanentChannelError) as caught:
            await imo.send(message(phone(3)))
        assert caught.value.unexpected
        assert caught.value.code == "unexpected"
        assert caught.value.provider_status == "401"


class TestInvitationAgainstFake:
    @pytest.mark.asyncio
    async def test_no_imo_account_is_a_result(self, imo: ImoChannel) -> None:
        result = await imo.invite(invitation(phone(0)))
        assert result == InvitationResult("no_imo_account", provider_status="nonexistent_user")

    @pytest.mark.asyncio
    async def test_never_accepting_stays_invited(self, imo: ImoChannel, receiver: Receiver) -> None:
        never = invitation(phone(1), receiver.url("never"))
        assert await imo.invite(never) == InvitationResult("invited")
        # A control invited after it, that accepts: once its acceptance is in, the other's
        # would have come too.
        assert await imo.invite(invitation(phone(5), receiver.url("accept"))) == (
            InvitationResult("invited")
        )
        name, _, _ = await receiver.next()
        assert name == "accept"
        assert receiver.received.empty()
        again = await imo.invite(never)
        assert again == InvitationResult("invited", provider_status="invited")

    @pytest.mark.asyncio
    async def test_misbehaving_imo_is_transient(self, imo: ImoChannel) -> None:
        with pytest.raises(TransientChannelError) as caught:
            await imo.invite(invitation(phone(2)))
        assert caught.value.code == "http_5xx"

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("digit", "content_type"),
        [(5, "application/json"), (8, "application/x-www-form-urlencoded")],
    )
    async def test_accepting_calls_back_then_subscribed(
        self, imo: ImoChannel, receiver: Receiver, digit: int, content_type: str
    ) -> None:
        assert await imo.invite(invitation(phone(digit), receiver.url("accept"))) == (
            InvitationResult("invited")
        )
        name, received_type, body = await receiver.next()
        assert (name, received_type, body) == ("accept", content_type, {"event": "accept_invite"})
        again = await imo.invite(invitation(phone(digit), receiver.url("accept")))
        assert again == InvitationResult("subscribed", provider_status="subscribed")

    @pytest.mark.asyncio
    async def test_invited_again_before_accepting(self, imo: ImoChannel) -> None:
        await imo.invite(invitation(phone(3)))
        again = await imo.invite(invitation(phone(3)))
        assert again == InvitationResult("invited", provider_status="invited")


# --- edge cases against a server whose answers the test scripts ---------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Scripted:
    url: str = ""
    answer: Handler | None = None
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        assert self.answer is not None
        return await self.answer(request)


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Scripted]:
    scripted = Scripted()
    app = web.Application()
    app.router.add_post("/api/simple/{endpoint}", scripted.handle)
    runner, port = await serve(app)
    scripted.url = f"http://127.0.0.1:{port}/api/simple/"
    yield scripted
    scripted.release.set()
    await runner.cleanup()


@pytest.fixture
def scripted_imo(scripted: Scripted, http: aiohttp.ClientSession) -> ImoChannel:
    return ImoChannel(
        base_url=scripted.url, username=USERNAME, password=PASSWORD, session=http, timeout=0.3
    )


def answer(status: int, body: bytes | object, headers: dict[str, str] | None = None) -> Handler:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=raw, headers=headers)

    return respond


NUMBER = "+8801711000003"
ECHO = {"status": "error", "response": {"type": "weird", "echo": [NUMBER, TEXT, NAME]}}


class TestRequestShape:
    @pytest.mark.asyncio
    async def test_notification(self, scripted: Scripted, scripted_imo: ImoChannel) -> None:
        scripted.answer = answer(
            200, {"status": "success", "response": {"result": {"post_id": "p1"}}}
        )
        result = await scripted_imo.send(message(NUMBER, "https://svc/cb/x"))
        assert result.provider_message_id == "p1"
        path, headers, raw = scripted.requests[0]
        assert path == "/api/simple/send_notification"
        assert headers["Content-Type"] == "application/json"
        expected_auth = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        assert headers["Authorization"] == f"Basic {expected_auth}"
        assert orjson.loads(raw) == {
            "phone": NUMBER,
            "msg": TEXT,
            "contents": [{"key": "Name", "value": NAME}, {"key": "Message", "value": TEXT}],
            "title": "Appointment Reminder",
            "action": "Official Website",
            "url": "https://www.nhf.org.bd",
            "callback_url": "https://svc/cb/x",
        }
        assert scripted_imo.name is ChannelName.IMO
        assert scripted_imo.base_url == scripted.url.rstrip("/")

    @pytest.mark.asyncio
    async def test_invitation(self, scripted: Scripted, scripted_imo: ImoChannel) -> None:
        scripted.answer = answer(200, {"status": "success", "response": {}})
        await scripted_imo.invite(invitation(NUMBER, "https://svc/cb/y"))
        path, _, raw = scripted.requests[0]
        assert path == "/api/simple/send_invite"
        assert orjson.loads(raw) == {
            "phone": NUMBER,
            "msg": TEXT,
            "contents": [{"key": "Name", "value": NAME}, {"key": "Message", "value": TEXT}],
            "title": "Invitation",
            "action": "Accept",
            "callback_url": "https://svc/cb/y",
        }


class TestTransientAnswers:
    @pytest.mark.asyncio
    @pytest.mark.parametrize("endpoint", ["send", "invite"])
    async def test_time_out(
        self, scripted: Scripted, scripted_imo: ImoChannel, endpoint: str
    ) -> None:
        async def hang(request: web.Request) -> web.StreamResponse:
            await scripted.release.wait()
            return web.Response()

        scripted.answer = hang
        with pytest.raises(TransientChannelError) as caught:
            await call(scripted_imo, endpoint)
        assert caught.value.code == "timeout"
        assert_redacted(caught.value, NUMBER)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("header", "retry_after"), [("7", 7.0), ("soon", None), ("", None)])
    async def test_rate_limited(
        self,
        scripted: Scripted,
        scripted_imo: ImoChannel,
        header: str,
        retry_after: float | None,
    ) -> None:
        scripted.answer = answer(429, b"slow down", {"Retry-After": header} if header else None)
        with pytest.raises(TransientChannelError) as caught:
            await scripted_imo.send(message(NUMBER))
        assert caught.value.code == "429"
        assert caught.value.retry_after == retry_after

    @pytest.mark.asyncio
    @pytest.mark.parametrize("endpoint", ["send", "invite"])
    async def test_unavailable(
        self, scripted: Scripted, scripted_imo: ImoChannel, endpoint: str
    ) -> None:
        scripted.answer = answer(503, ECHO)
        with pytest.raises(TransientChannelError) as caught:
            await call(scripted_imo, endpoint)
        assert caught.value.code == "http_5xx"
        assert caught.value.provider_status == "503"
        assert_redacted(caught.value, NUMBER)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("endpoint", ["send", "invite"])
    async def test_connection_refused(self, http: aiohttp.ClientSession, endpoint: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        imo = ImoChannel(
            base_url=f"http://127.0.0.1:{port}/api/simple",
            username=USERNAME,
            password=PASSWORD,
            session=http,
            timeout=2,
        )
        with pytest.raises(TransientChannelError) as caught:
            await call(imo, endpoint)
        assert caught.value.code == "connection_error"
        assert_redacted(caught.value, NUMBER)


async def call(imo: ImoChannel, endpoint: str) -> object:
    if endpoint == "send":
        return await imo.send(message(NUMBER, f"https://svc/cb/{TOKEN}?sig={TOKEN}"))
    return await imo.invite(invitation(NUMBER, f"https://svc/cb/{TOKEN}?sig={TOKEN}"))


class TestUnexpectedAnswers:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (200, b"<html>OK</html>"),
            (200, b""),
            (200, {"status": "success", "response": {}}),
            (200, {"status": "success", "response": {"result": {"post_id": 42}}}),
            (200, {"status": "success", "response": {"error_code": "blocked"}}),
            (200, {"status": "success", "response": {"error_code": "subscribed"}}),
            (200, {"status": "success", "response": {"error_code": "invited"}}),
            (200, {"status": "failure", "response": {"result": {"post_id": "p"}}}),
            (200, ["status", "success"]),
            (400, {"status": "error", "response": {"type": "invalid_phone"}}),
            (400, ECHO),
            (403, {"status": "error", "response": {"type": "nonexistent_user"}}),
            (302, b""),
        ],
    )
    async def test_notification(
        self, scripted: Scripted, scripted_imo: ImoChannel, status: int, body: object
    ) -> None:
        scripted.answer = answer(status, body)
        with pytest.raises(PermanentChannelError) as caught:
            await scripted_imo.send(message(NUMBER, f"https://svc/cb/{TOKEN}?sig={TOKEN}"))
        assert caught.value.unexpected
        assert caught.value.code == "unexpected"
        detail = assert_redacted(caught.value, NUMBER)
        assert detail["response"]["status"] == status
        assert detail["request"]["body"]["callback_url"] == "https://svc/cb/***"

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (200, b"not json"),
            (200, {"status": "success", "response": {"error_code": "blocked"}}),
            (200, {"status": "error", "response": {"error_code": "invited"}}),
            (200, {"status": "success"}),
            (400, {"status": "error", "response": {"type": "invalid_phone"}}),
            (401, b"Unauthorized"),
        ],
    )
    async def test_invitation(
        self, scripted: Scripted, scripted_imo: ImoChannel, status: int, body: object
    ) -> None:
        scripted.answer = answer(status, body)
        with pytest.raises(PermanentChannelError) as caught:
            await scripted_imo.invite(invitation(NUMBER))
        assert caught.value.unexpected
        assert_redacted(caught.value, NUMBER)

    @pytest.mark.asyncio
    async def test_evidence_is_cut_to_2000_characters(
        self, scripted: Scripted, scripted_imo: ImoChannel
    ) -> None:
        scripted.answer = answer(418, b"x" * 10_000)
        with pytest.raises(PermanentChannelError) as caught:
            await scripted_imo.send(message(NUMBER))
        assert caught.value.detail["response"]["body"] == "x" * 2_000  # type: ignore[index]


class TestKnownAnswersFromAnyServer:
    @pytest.mark.asyncio
    async def test_not_subscribed_with_any_envelope_status(
        self, scripted: Scripted, scripted_imo: ImoChannel
    ) -> None:
        scripted.answer = answer(
            200, {"status": "error", "response": {"error_code": "not_subscribed"}}
        )
        with pytest.raises(PermanentChannelError) as caught:
            await scripted_imo.send(message(NUMBER))
        assert caught.value.code == "not_subscribed"
        assert not caught.value.unexpected
        result = await scripted_imo.invite(invitation(NUMBER))
        assert result == InvitationResult("not_subscribed", provider_status="not_subscribed")
