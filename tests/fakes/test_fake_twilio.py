"""The fake Twilio over a real socket: its answers, callbacks, faults and test hooks."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.channels import twilio_signature
from app.fakes.server import start as start_server
from app.fakes.twilio import FAKE_TWILIO, FakeTwilioConfig, start_fake_twilio
from tests.waiting import wait_until

SID = FakeTwilioConfig().account_sid
TOKEN = FakeTwilioConfig().auth_token


def basic_auth(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


AUTH = basic_auth(SID, TOKEN)
DELAY = 0.03


@dataclass
class Fake:
    base_url: str
    runner: web.AppRunner

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/2010-04-01/Accounts/{SID}/Messages.json"


@dataclass
class Received:
    url: str
    params: dict[str, str]
    signature: str | None


@dataclass
class Receiver:
    """A tiny status-callback endpoint; `answers` are popped per call, then 200."""

    base_url: str = ""
    calls: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.calls.append(
            Received(
                url=str(request.url),
                params={k: str(v) for k, v in form.items()},
                signature=request.headers.get("X-Twilio-Signature"),
            )
        )
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    def url(self, name: str) -> str:
        return f"{self.base_url}/status/{name}?notification={name}"

    def statuses(self, name: str) -> list[str]:
        return [c.params["MessageStatus"] for c in self.calls if c.url == self.url(name)]

    async def control(self, session: aiohttp.ClientSession, fake: Fake) -> None:
        """Send a message that calls back, and wait for its first callback: one that was
        coming for anything sent before would have come by then."""
        await send(session, fake, StatusCallback=self.url("control"))
        await wait_until(lambda: self.statuses("control"))


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[Fake]:
    runner, port = await start_fake_twilio(FakeTwilioConfig(callback_delay=DELAY))
    yield Fake(f"http://127.0.0.1:{port}", runner)
    await runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/status/{name}", receiver.handle)
    runner, port = await start_server(app, "127.0.0.1", 0)
    receiver.base_url = f"http://127.0.0.1:{port}"
    yield receiver
    await runner.cleanup()


async def send(
    session: aiohttp.ClientSession,
    fake: Fake,
    auth: str | None = AUTH,
    timeout: float = 5.0,
    fields: dict[str, str] | None = None,
    **form: str,
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    data = {"To": "+8801711000001", "From": "+15005550006", "Body": "Your visit is tomorrow"}
    data.update(fields or {})
    data.update(form)
    data = {k: v for k, v in data.items() if v}
    headers = {"Authorization": auth} if auth else {}
    async with session.post(
        fake.messages_url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        return response.status, await response.read(), response


async def stats(session: aiohttp.ClientSession, fake: Fake) -> dict[str, object]:
    async with session.get(f"{fake.base_url}/_fake/stats") as response:
        assert response.status == 200
        result: dict[str, object] = await response.json()
        return result


async def configure(session: aiohttp.ClientSession, fake: Fake, **changes: object) -> int:
    async with session.post(f"{fake.base_url}/_fake/config", json=changes) as response:
        return response.status


async def settled_callbacks(session: aiohttp.ClientSession, fake: Fake) -> object:
    """The callback counts once no message has callbacks still to come."""
    deadline = time.monotonic() + 5
    while True:
        callbacks = (await stats(session, fake))["callbacks"]
        assert isinstance(callbacks, dict)
        if not callbacks["pending"] or time.monotonic() > deadline:
            return callbacks
        await asyncio.sleep(0.02)


class TestAcceptedMessage:
    @pytest.mark.asyncio
    async def test_answers_like_twilio(self, fake: Fake, http: aiohttp.ClientSession) -> None:
        status, body, response = await send(http, fake)

        assert status == 201
        assert response.content_type == "application/json"
        message = orjson.loads(body)
        assert re.fullmatch(r"SM[0-9a-f]{32}", message["sid"])
        assert message["status"] == "queued"
        assert message["to"] == "+8801711000001"
        assert message["from"] == "+15005550006"
        assert message["body"] == "Your visit is tomorrow"
        assert message["num_segments"] == "1"
        assert message["error_code"] is None
        assert message["error_message"] is None
        assert message["account_sid"] == SID
        assert message["api_version"] == "2010-04-01"
        assert message["uri"] == f"/2010-04-01/Accounts/{SID}/Messages/{message['sid']}.json"
        assert parsedate_to_datetime(message["date_created"]).tzinfo is not None

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("text", "segments"),
        [("a" * 160, "1"), ("a" * 161, "2"), ("আ" * 70, "1"), ("আ" * 71, "2")],
    )
    async def test_counts_segments_like_gsm_and_ucs2(
        self, fake: Fake, http: aiohttp.ClientSession, text: str, segments: str
    ) -> None:
        status, body, _ = await send(http, fake, Body=text)

        assert status == 201
        assert orjson.loads(body)["num_segments"] == segments


class TestRefusals:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "auth",
        [None, basic_auth(SID, "wrong"), basic_auth("ACother", TOKEN), "Bearer x", "Basic !!"],
    )
    async def test_wrong_credentials_are_401(
        self, fake: Fake, http: aiohttp.ClientSession, auth: str | None
    ) -> None:
        status, body, _ = await send(http, fake, auth=auth)

        assert status == 401
        assert orjson.loads(body) == {
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        }

    @pytest.mark.asyncio
    async def test_another_accounts_url_is_401(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        url = fake.messages_url.replace(SID, "AC" + "1" * 32)
        async with http.post(
            url, data={"To": "+1", "From": "+2", "Body": "x"}, headers={"Authorization": AUTH}
        ) as r:
            assert r.status == 401

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("missing", "code"), [("To", 21604), ("From", 21603), ("Body", 21602)])
    async def test_missing_field_is_400_with_twilio_code(
        self, fake: Fake, http: aiohttp.ClientSession, missing: str, code: int
    ) -> None:
        status, body, _ = await send(http, fake, fields={missing: ""})

        assert status == 400
        error = orjson.loads(body)
        assert (error["code"], error["status"]) == (code, 400)
        assert error["more_info"] == f"https://www.twilio.com/docs/errors/{code}"

    @pytest.mark.asyncio
    async def test_number_ending_in_8_is_invalid_without_callbacks(
        self, fake: Fake, http: aiohttp.ClientSession, receiver: Receiver
    ) -> None:
        status, body, _ = await send(
            http, fake, To="+8801711000008", StatusCallback=receiver.url("eight")
        )

        assert status == 400
        assert orjson.loads(body) == {
            "code": 21211,
            "message": "The 'To' number +8801711000008 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        }
        counts = await stats(http, fake)
        assert counts["accepted"] == 0
        assert counts["responses"] == {"400": 1}
        await receiver.control(http, fake)
        assert receiver.statuses("eight") == []


class TestStatusCallbacks:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("to", "final", "error_code"),
        [
            ("+8801711000001", "delivered", None),
            ("+8801711000007", "failed", "30006"),
            ("+8801711000006", "undelivered", "30003"),
        ],
    )
    async def test_walks_sent_then_final_status_signed(
        self,
        fake: Fake,
        http: aiohttp.ClientSession,
        receiver: Receiver,
        to: str,
        final: str,
        error_code: str | None,
    ) -> None:
        url = receiver.url("walk")
        status, body, _ = await send(http, fake, To=to, StatusCallback=url)
        assert status == 201
        sid = orjson.loads(body)["sid"]

        await wait_until(lambda: len(receiver.calls) == 2)

        assert receiver.statuses("walk") == ["sent", final]
        sent, last = receiver.calls
        assert sent.params == {
            "AccountSid": SID,
            "ApiVersion": "2010-04-01",
            "From": "+15005550006",
            "MessageSid": sid,
            "MessageStatus": "sent",
            "SmsSid": sid,
            "SmsStatus": "sent",
            "To": to,
        }
        assert last.params.get("ErrorCode") == error_code
        assert last.params["SmsStatus"] == final
        for call in receiver.calls:
            assert twilio_signature.is_valid(TOKEN, url, call.params, call.signature)
        assert await settled_callbacks(http, fake) == {
            "sent": 2,
            "failed": 0,
            "rejected": {},
            "pending": 0,
        }

    @pytest.mark.asyncio
    async def test_retries_5xx_and_counts_rejections(
        self, fake: Fake, http: aiohttp.ClientSession, receiver: Receiver
    ) -> None:
        # The first callback gets 503 then 200 (retried); the second gets 403 (kept).
        receiver.answers = [503, 200, 403]
        await send(http, fake, StatusCallback=receiver.url("retry"))

        await wait_until(lambda: len(receiver.calls) == 3)

        assert receiver.statuses("retry") == ["sent", "sent", "delivered"]
        assert await settled_callbacks(http, fake) == {
            "sent": 1,
            "failed": 0,
            "rejected": {"403": 1},
            "pending": 0,
        }

    @pytest.mark.asyncio
    async def test_unreachable_callback_counts_as_failed(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await send(http, fake, StatusCallback="http://127.0.0.1:9/status")

        assert await settled_callbacks(http, fake) == {
            "sent": 0,
            "failed": 2,
            "rejected": {},
            "pending": 0,
        }

    @pytest.mark.asyncio
    async def test_no_callbacks_when_disabled(
        self, fake: Fake, http: aiohttp.ClientSession, receiver: Receiver
    ) -> None:
        assert await configure(http, fake, callbacks_enabled=False) == 200

        status, _, _ = await send(http, fake, StatusCallback=receiver.url("off"))

        assert status == 201
        assert await configure(http, fake, callbacks_enabled=True) == 200
        await receiver.control(http, fake)
        assert receiver.statuses("off") == []


class TestHooks:
    @pytest.mark.asyncio
    async def test_stats_count_per_recipient_and_sender(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await send(http, fake, To="+8801711000001", From="+15005550001")
        await send(http, fake, To="+8801711000001", From="+15005550002")
        await send(http, fake, To="+8801711000002", From="+15005550001")
        await send(http, fake, To="+8801711000008", From="+15005550001")
        await send(http, fake, auth=None)

        counts = await stats(http, fake)

        assert counts["requests"] == 5
        assert counts["accepted"] == 3
        assert counts["responses"] == {"201": 3, "400": 1, "401": 1}
        assert counts["to"] == {"+8801711000001": 2, "+8801711000002": 1}
        assert counts["from"] == {"+15005550001": 2, "+15005550002": 1}

    @pytest.mark.asyncio
    async def test_reset_zeroes_counts_drops_callbacks_and_restores_config(
        self, fake: Fake, http: aiohttp.ClientSession, receiver: Receiver
    ) -> None:
        await configure(http, fake, callback_delay=0.3, error_rate=0.5)
        for _ in range(4):
            await send(http, fake, StatusCallback=receiver.url("reset"))

        async with http.post(f"{fake.base_url}/_fake/reset") as response:
            assert response.status == 200
            config = await response.json()

        assert config["error_rate"] == 0.0
        assert config["callback_delay"] == DELAY
        assert "auth_token" not in config
        counts = await stats(http, fake)
        assert counts["requests"] == 0
        assert counts["to"] == {}
        assert counts["callbacks"] == {"sent": 0, "failed": 0, "rejected": {}, "pending": 0}
        # The dropped callbacks were due 0.3 s after their messages: a control sent after
        # them with the same delay calls back later than they would have.
        await configure(http, fake, callback_delay=0.3)
        await receiver.control(http, fake)
        assert receiver.statuses("reset") == []

    @pytest.mark.asyncio
    async def test_config_changes_apply_now(self, fake: Fake, http: aiohttp.ClientSession) -> None:
        assert await configure(http, fake, error_rate=1.0) == 200
        assert (await send(http, fake))[0] == 500

        assert await configure(http, fake, error_rate=0.0) == 200
        assert (await send(http, fake))[0] == 201

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "changes",
        [
            {"auth_token": "x"},
            {"error_rate": 1.5},
            {"error_rate": 0.6, "garbage_rate": 0.6},
            {"callback_delay": -1},
            {"callbacks_enabled": "yes"},
            {"error_rate": "0.5"},
        ],
    )
    async def test_bad_config_is_400_and_changes_nothing(
        self, fake: Fake, http: aiohttp.ClientSession, changes: dict[str, object]
    ) -> None:
        assert await configure(http, fake, **changes) == 400
        assert (await send(http, fake))[0] == 201


class TestFaults:
    async def _statuses(self, session: aiohttp.ClientSession, fake: Fake, n: int) -> list[int]:
        return [(await send(session, fake))[0] for _ in range(n)]

    @pytest.mark.asyncio
    async def test_rates_are_seeded_and_roughly_kept(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await configure(http, fake, error_rate=0.2, rate_limited_rate=0.2, seed=7)
        first = await self._statuses(http, fake, 200)
        await configure(http, fake, seed=7)
        again = await self._statuses(http, fake, 200)

        assert first == again
        assert 20 <= first.count(500) <= 60
        assert 20 <= first.count(429) <= 60
        assert first.count(201) == 200 - first.count(500) - first.count(429)
        counts = await stats(http, fake)
        assert counts["faults"] == {
            "error": 2 * first.count(500),
            "rate_limited": 2 * first.count(429),
        }
        assert counts["accepted"] == 2 * first.count(201)

    @pytest.mark.asyncio
    async def test_error_is_500_with_garbage(self, fake: Fake, http: aiohttp.ClientSession) -> None:
        await configure(http, fake, error_rate=1.0)

        status, body, _ = await send(http, fake)

        assert status == 500
        with pytest.raises(ValueError):
            orjson.loads(body)
        assert (await stats(http, fake))["accepted"] == 0

    @pytest.mark.asyncio
    async def test_rate_limited_is_429_with_retry_after(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await configure(http, fake, rate_limited_rate=1.0)

        status, body, response = await send(http, fake)

        assert status == 429
        assert response.headers["Retry-After"] == "1"
        error = orjson.loads(body)
        assert (error["code"], error["status"]) == (20429, 429)

    @pytest.mark.asyncio
    async def test_a_slow_provider_takes_the_message_then_answers_after_answer_delay(
        self, fake: Fake, http: aiohttp.ClientSession
    ) -> None:
        await configure(http, fake, answer_delay=0.3)

        began = time.monotonic()
        status, _, _ = await send(http, fake)

        assert status == 201 and time.monotonic() - began >= 0.3
        assert (await stats(http, fake))["to"] == {"+8801711000001": 1}
        with pytest.raises(ValueError, match="answer_delay"):
            FakeTwilioConfig(answer_delay=-1)

    @pytest.mark.asyncio
    async def test_garbage_is_accepted_but_unreadable(
        self, fake: Fake, http: aiohttp.ClientSession, receiver: Receiver
    ) -> None:
        await configure(http, fake, garbage_rate=1.0)

        status, body, _ = await send(http, fake, StatusCallback=receiver.url("garbage"))

        assert status == 201
        with pytest.raises(ValueError):
            orjson.loads(body)
        assert (await stats(http, fake))["to"] == {"+8801711000001": 1}
        await wait_until(lambda: len(receiver.calls) == 2)

    @pytest.mark.asyncio
    async def test_timeout_hangs_and_shutdown_is_prompt(self, http: aiohttp.ClientSession) -> None:
        runner, port = await start_fake_twilio(FakeTwilioConfig(timeout_rate=1.0))
        fake = Fake(f"http://127.0.0.1:{port}", runner)
        try:
            with pytest.raises(TimeoutError):
                await send(http, fake, timeout=0.2)
            # Another request left hanging while the server stops.
            hanging = asyncio.create_task(send(http, fake, timeout=10))
            await wait_until(lambda: runner.app[FAKE_TWILIO].requests == 2)
        finally:
            started = time.monotonic()
            await runner.cleanup()
        assert time.monotonic() - started < 2
        result = await asyncio.gather(hanging, return_exceptions=True)
        assert result[0] is not None
