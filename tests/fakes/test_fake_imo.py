"""The fake Imo as a server: its API, its steering, its faults, callbacks and test endpoints."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from app.fakes.imo import FAKE_IMO_KEY, FakeImoConfig, start_fake_imo
from app.fakes.server import start as start_server
from tests.waiting import wait_until

USERNAME = "u"
PASSWORD = "p"
DELAY = 0.05


def headers(username: str = USERNAME, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


@dataclass
class Fake:
    root: str
    session: aiohttp.ClientSession
    runner: web.AppRunner

    async def call(
        self, endpoint: str, phone: str, callback_url: str = "", **extra: Any
    ) -> tuple[int, bytes]:
        body = {"phone": phone, "msg": "hello", "callback_url": callback_url, **extra}
        async with self.session.post(
            f"{self.root}/api/simple/{endpoint}", data=orjson.dumps(body), headers=headers()
        ) as response:
            return response.status, await response.read()

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.root}/_fake/stats") as response:
            assert response.status == 200
            result: dict[str, Any] = orjson.loads(await response.read())
            return result

    async def configure(self, **changes: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            f"{self.root}/_fake/config", data=orjson.dumps(changes)
        ) as response:
            return response.status, orjson.loads(await response.read())


async def start(session: aiohttp.ClientSession, **options: Any) -> Fake:
    config = FakeImoConfig(username=USERNAME, password=PASSWORD, callback_delay=DELAY, **options)
    runner, port = await start_fake_imo(config, port=0)
    return Fake(f"http://127.0.0.1:{port}", session, runner)


@pytest_asyncio.fixture
async def fake(http: aiohttp.ClientSession) -> AsyncIterator[Fake]:
    fake = await start(http, callback_retry_delay=0.01)
    yield fake
    await fake.runner.cleanup()


@dataclass
class Receiver:
    """Answers callbacks with the scripted statuses in turn (then 200) and records them."""

    port: int = 0
    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, str]] = field(default_factory=list)
    # The `name` of the URL each callback in `received` came to.
    names: list[str] = field(default_factory=list)

    def url(self, name: str = "cb") -> str:
        return f"http://127.0.0.1:{self.port}/cb/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            self.received.append(await request.json())
        else:
            self.received.append(dict(await request.post()))  # type: ignore[arg-type]
        self.names.append(request.match_info["name"])
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def control(self, fake: Fake) -> None:
        """Invite a number that accepts, and wait for its callback: a callback that was
        coming for anything sent before would have come by then."""
        await fake.call("send_invite", "+8801711000005", self.url("control"))
        await wait_until(lambda: "control" in self.names)
        self.received.pop(self.names.index("control"))
        self.names.remove("control")


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/cb/{name}", receiver.handle)
    runner, receiver.port = await start_server(app, "127.0.0.1", 0)
    yield receiver
    await runner.cleanup()


async def settle(fake: Fake, timeout: float = 2.0) -> dict[str, Any]:
    """Wait until no callback is pending, and answer the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await fake.stats()
        if stats["callbacks"]["pending"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


class TestApi:
    @pytest.mark.asyncio
    async def test_needs_basic_auth(self, fake: Fake) -> None:
        for auth in ({}, headers(password="wrong")):
            async with fake.session.post(
                f"{fake.root}/api/simple/send_notification",
                data=orjson.dumps({"phone": "+8801711000003", "msg": "x"}),
                headers=auth,
            ) as response:
                assert response.status == 401
        assert (await fake.stats())["answers"]["send_notification"] == {"401": 2}

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "body",
        [
            b"{not json",
            b"[1, 2]",
            b'{"msg": "x"}',
            b'{"phone": "+88017110000x", "msg": "x"}',
            b'{"phone": "+8801711000003"}',
            b'{"phone": "+8801711000003", "msg": "x", "callback_url": 3}',
        ],
    )
    async def test_malformed_body_is_a_400_json_error(self, fake: Fake, body: bytes) -> None:
        async with fake.session.post(
            f"{fake.root}/api/simple/send_invite", data=body, headers=headers()
        ) as response:
            assert response.status == 400
            answer = orjson.loads(await response.read())
        assert answer["status"] == "error"
        assert answer["response"]["type"] == "bad_request"


class TestSteering:
    @pytest.mark.asyncio
    async def test_no_imo_account(self, fake: Fake) -> None:
        expected = {"status": "error", "response": {"type": "nonexistent_user"}}
        for endpoint in ("send_invite", "send_notification"):
            status, body = await fake.call(endpoint, "+8801711000000")
            assert (status, orjson.loads(body)) == (400, expected)

    @pytest.mark.asyncio
    async def test_never_subscribes(self, fake: Fake, receiver: Receiver) -> None:
        status, body = await fake.call("send_invite", "+8801711000001", receiver.url())
        assert (status, orjson.loads(body)) == (200, {"status": "success", "response": {}})
        status, body = await fake.call("send_notification", "+8801711000001", receiver.url())
        assert (status, orjson.loads(body)) == (
            200,
            {"status": "success", "response": {"error_code": "not_subscribed"}},
        )
        await receiver.control(fake)
        assert receiver.received == []
        _, body = await fake.call("send_invite", "+8801711000001")
        assert orjson.loads(body)["response"] == {"error_code": "invited"}

    @pytest.mark.asyncio
    async def test_misbehaves(self, fake: Fake) -> None:
        for endpoint in ("send_invite", "send_notification"):
            status, body = await fake.call(endpoint, "+8801711000002")
            assert status == 500
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(body)

    @pytest.mark.asyncio
    async def test_invitation_lifecycle(self, fake: Fake, receiver: Receiver) -> None:
        _, body = await fake.call("send_invite", "+8801711000004", receiver.url())
        assert orjson.loads(body) == {"status": "success", "response": {}}
        _, body = await fake.call("send_invite", "+8801711000004", receiver.url())
        assert orjson.loads(body)["response"] == {"error_code": "invited"}
        stats = await settle(fake)
        assert receiver.received == [{"event": "accept_invite"}]
        _, body = await fake.call("send_invite", "+8801711000004", receiver.url())
        assert orjson.loads(body)["response"] == {"error_code": "subscribed"}
        assert stats["callbacks"] == {
            "scheduled": 1,
            "sent": 1,
            "rejected": 0,
            "failed": 0,
            "pending": 0,
        }

    @pytest.mark.asyncio
    async def test_read_receipts_for_3_to_6_only(self, fake: Fake, receiver: Receiver) -> None:
        post_ids = []
        for digit in range(3, 10):
            status, body = await fake.call(
                "send_notification", f"+880171100000{digit}", receiver.url()
            )
            assert status == 200
            post_ids.append(orjson.loads(body)["response"]["result"]["post_id"])
        assert len(set(post_ids)) == 7
        await settle(fake)
        received = sorted(receiver.received, key=lambda event: post_ids.index(event["post_id"]))
        assert received == [{"event": "read_receipt", "post_id": p} for p in post_ids[:4]]


class TestObservability:
    @pytest.mark.asyncio
    async def test_stats_count_requests_per_endpoint_and_phone(self, fake: Fake) -> None:
        await fake.call("send_invite", "+8801711000001")
        await fake.call("send_notification", "+8801711000007")
        await fake.call("send_notification", "+8801711000007")
        await fake.call("send_notification", "+8801711000000")
        stats = await fake.stats()
        assert stats["requests"] == {"send_invite": 1, "send_notification": 3}
        assert stats["phones"] == {
            "send_invite": {"+8801711000001": 1},
            "send_notification": {"+8801711000007": 2, "+8801711000000": 1},
        }
        assert stats["delivered"] == {"+8801711000007": 2}
        assert stats["answers"]["send_notification"] == {"200": 2, "400": 1}

    @pytest.mark.asyncio
    async def test_reset_forgets_everything(self, fake: Fake) -> None:
        await fake.call("send_invite", "+8801711000009")
        async with fake.session.post(f"{fake.root}/_fake/reset") as response:
            assert response.status == 200
        stats = await fake.stats()
        assert stats["requests"] == {"send_invite": 0, "send_notification": 0}
        assert stats["phones"] == {"send_invite": {}, "send_notification": {}}
        assert stats["callbacks"]["pending"] == 0
        _, body = await fake.call("send_invite", "+8801711000009")
        assert orjson.loads(body)["response"] == {}

    @pytest.mark.asyncio
    async def test_config_changes_at_run_time(self, fake: Fake) -> None:
        status, settings = await fake.configure(error_rate=1.0, callback_delay=0.5)
        assert status == 200
        assert settings["error_rate"] == 1.0
        assert settings["callback_delay"] == 0.5
        assert (await fake.call("send_notification", "+8801711000003"))[0] == 500
        await fake.configure(error_rate=0)
        assert (await fake.call("send_notification", "+8801711000003"))[0] == 200

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "changes",
        [
            {"error_rate": 2},
            {"error_rate": 0.6, "garbage_rate": 0.6},
            {"password": "x"},
            {"callbacks_enabled": "yes"},
            {"error_rate": True},
            {"callback_delay": -1},
        ],
    )
    async def test_bad_config_is_refused(self, fake: Fake, changes: dict[str, Any]) -> None:
        status, answer = await fake.configure(**changes)
        assert status == 400
        assert answer["status"] == "error"
        assert (await fake.call("send_notification", "+8801711000003"))[0] == 200


class TestFaults:
    @pytest.mark.asyncio
    async def test_error_rate_one_answers_500_garbage(self, fake: Fake) -> None:
        await fake.configure(error_rate=1.0)
        for digit in range(10):
            status, body = await fake.call("send_notification", f"+880171100000{digit}")
            assert status == 500
            assert not body.startswith(b"{")
        assert (await fake.stats())["faults"]["error"] == 10

    @pytest.mark.asyncio
    async def test_garbage_rate(self, fake: Fake) -> None:
        await fake.configure(garbage_rate=1.0)
        status, body = await fake.call("send_invite", "+8801711000003")
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)

    @pytest.mark.asyncio
    async def test_rate_limited_rate(self, fake: Fake) -> None:
        await fake.configure(rate_limited_rate=1.0)
        async with fake.session.post(
            f"{fake.root}/api/simple/send_notification",
            data=orjson.dumps({"phone": "+8801711000003", "msg": "x"}),
            headers=headers(),
        ) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"

    @pytest.mark.asyncio
    async def test_timeout_rate_hangs_but_shuts_down_at_once(
        self, http: aiohttp.ClientSession
    ) -> None:
        fake = await start(http, timeout_rate=1.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await fake.call("send_notification", "+8801711000003")
        hanging = asyncio.create_task(fake.call("send_notification", "+8801711000004"))
        await wait_until(
            lambda: fake.runner.app[FAKE_IMO_KEY].phones["send_notification"]["+8801711000004"]
        )
        started = time.monotonic()
        await fake.runner.cleanup()
        assert time.monotonic() - started < 2
        try:
            status, _ = await asyncio.wait_for(hanging, 1)
        except aiohttp.ClientError:
            return
        assert status == 504

    @pytest.mark.asyncio
    async def test_seeded_mix_is_reproducible(self, http: aiohttp.ClientSession) -> None:
        outcomes = []
        for _ in range(2):
            fake = await start(http, error_rate=0.3, garbage_rate=0.2, seed=7)
            statuses = [
                (await fake.call("send_notification", "+8801711000007"))[0] for _ in range(40)
            ]
            await fake.runner.cleanup()
            outcomes.append(statuses)
        assert outcomes[0] == outcomes[1]
        assert 5 <= outcomes[0].count(500) <= 20
        assert set(outcomes[0]) == {200, 500}


class TestCallbacks:
    @pytest.mark.asyncio
    async def test_disabled(self, fake: Fake, receiver: Receiver) -> None:
        await fake.configure(callbacks_enabled=False)
        await fake.call("send_invite", "+8801711000003", receiver.url())
        await fake.call("send_notification", "+8801711000003", receiver.url())
        assert (await fake.stats())["callbacks"]["scheduled"] == 0
        await fake.configure(callbacks_enabled=True)
        await receiver.control(fake)
        assert receiver.received == []
        _, body = await fake.call("send_invite", "+8801711000003", receiver.url())
        assert orjson.loads(body)["response"] == {"error_code": "subscribed"}

    @pytest.mark.asyncio
    async def test_5xx_is_retried(self, fake: Fake, receiver: Receiver) -> None:
        receiver.statuses = [503, 502]
        await fake.call("send_notification", "+8801711000003", receiver.url())
        stats = await settle(fake)
        assert len(receiver.received) == 3
        assert stats["callbacks"]["sent"] == 1

    @pytest.mark.asyncio
    async def test_4xx_is_not_retried(self, fake: Fake, receiver: Receiver) -> None:
        receiver.statuses = [404]
        await fake.call("send_notification", "+8801711000003", receiver.url())
        stats = await settle(fake)
        assert len(receiver.received) == 1
        assert stats["callbacks"]["rejected"] == 1

    @pytest.mark.asyncio
    @pytest.mark.parametrize("url", ["http://127.0.0.1:9/cb", "not a url"])
    async def test_unreachable_is_counted_failed(self, fake: Fake, url: str) -> None:
        status, _ = await fake.call("send_notification", "+8801711000003", url)
        assert status == 200
        stats = await settle(fake)
        assert stats["callbacks"]["failed"] == 1


def test_run_serves_until_terminated() -> None:
    code = "from app.fakes.imo import FakeImoConfig, run; run('127.0.0.1', 0, FakeImoConfig())"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("fake Imo listening on http://127.0.0.1:")
            assert line.rstrip().endswith("/api/simple")
            root = line.split()[-1].removesuffix("/api/simple")
            with urllib.request.urlopen(f"{root}/_fake/stats", timeout=5) as response:
                assert orjson.loads(response.read())["requests"]["send_invite"] == 0
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
