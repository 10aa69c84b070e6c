"""A fake cht-gateway phone: it polls /gateway/api/sms as the Android app does (its
headers, gzip bodies, HTTP Basic auth) and plays the phone's part: each message it is
handed is acknowledged `UNSENT` on the next poll, then reported `SENT` and `DELIVERED`
(or `FAILED` with a reason, at `fail_rate`) on the one after. SMS "received" by the phone
(`receive`) go up with the next poll. `notify fake-gateway` runs one; tests drive it
poll by poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from app.channels.base import basic_auth

log = logging.getLogger(__name__)

# The headers of cht-gateway's requests (its README, "API").
APP_HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}


@dataclass
class FakeGatewayConfig:
    url: str
    user: str
    password: str
    # Seconds between polls (`run`).
    interval: float = 5.0
    # The share of messages the phone reports FAILED instead of SENT and DELIVERED.
    fail_rate: float = 0.0
    failure_reason: str = "generic failure"
    # Send the bodies gzip-encoded, as the app may.
    gzip: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.interval <= 0:
            raise ValueError("interval must be positive")


@dataclass
class FakeGateway:
    config: FakeGatewayConfig
    session: aiohttp.ClientSession
    # What the phone has sent, by message id: (to, content, final status).
    sent: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _updates: list[dict[str, str]] = field(default_factory=list)
    _to_report: list[str] = field(default_factory=list)
    _inbox: list[dict[str, object]] = field(default_factory=list)
    _received: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.config.seed)

    def receive(self, sender: str, content: str) -> None:
        """An SMS reaches the phone: it goes to the server with the next poll."""
        self._received += 1
        now_ms = int(time.time() * 1000)  # cht-gateway's times: ms since the epoch
        self._inbox.append(
            {
                "id": f"fake-in-{id(self)}-{self._received}",
                "from": sender,
                "content": content,
                "sms_sent": now_ms,
                "sms_received": now_ms,
            }
        )

    async def check(self) -> bool:
        """The app's settings check: GET answers {"medic-gateway": true}."""
        async with self.session.get(self.config.url, headers=self._headers()) as response:
            return response.status == 200 and (await response.json()) == {"medic-gateway": True}

    async def poll(self) -> list[dict[str, str]]:
        """One poll: report, hand up the inbox, take the messages offered; returns them."""
        for message_id in self._to_report:
            to, content, _ = self.sent[message_id]
            if self._random.random() < self.config.fail_rate:
                self._updates.append(
                    {"id": message_id, "status": "FAILED", "reason": self.config.failure_reason}
                )
                self.sent[message_id] = (to, content, "FAILED")
            else:
                self._updates.append({"id": message_id, "status": "SENT"})
                self._updates.append({"id": message_id, "status": "DELIVERED"})
                self.sent[message_id] = (to, content, "DELIVERED")
        self._to_report = []
        body = orjson.dumps({"messages": self._inbox, "updates": self._updates})
        headers = self._headers()
        if self.config.gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        async with self.session.post(self.config.url, data=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"gateway poll refused ({response.status}): {answer}")
        self._inbox, self._updates = [], []
        offered: list[dict[str, str]] = answer.get("messages") or []
        for message in offered:
            if message["id"] not in self.sent:
                self.sent[message["id"]] = (message["to"], message["content"], "UNSENT")
                self._updates.append({"id": message["id"], "status": "UNSENT"})
                self._to_report.append(message["id"])
        return offered

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set; a failed poll is logged."""
        while not stop.is_set():
            try:
                offered = await self.poll()
                if offered:
                    log.info("fake gateway took %d messages", len(offered))
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as error:
                log.warning("fake gateway poll failed: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)

    def _headers(self) -> dict[str, str]:
        return {
            **APP_HEADERS,
            "Authorization": basic_auth(self.config.user, self.config.password),
        }


async def wait_for_server(gateway: FakeGateway, within_seconds: float) -> None:
    """The app's settings check, retried while the server is not up yet (`notify dev`
    starts the phone with the API); a server that answers otherwise ends it."""
    deadline = asyncio.get_running_loop().time() + within_seconds
    while True:
        try:
            if await gateway.check():
                return
            raise SystemExit(
                f"{gateway.config.url} did not answer as a cht-gateway server "
                "(wrong URL, name or secret?)"
            )
        except (aiohttp.ClientConnectionError, TimeoutError, aiohttp.ContentTypeError):
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(
                    f"{gateway.config.url} unreachable for {within_seconds:g} s"
                ) from None
            await asyncio.sleep(0.5)


async def run_until_stopped(config: FakeGatewayConfig, startup_seconds: float = 120.0) -> None:
    async with aiohttp.ClientSession() as session:
        gateway = FakeGateway(config, session)
        await wait_for_server(gateway, startup_seconds)
        log.info("fake gateway %s polling %s", config.user, config.url)
        await gateway.run(asyncio.Event())
