"""A fake of Imo's partner API, as a real HTTP server, for development, tests and benchmarks.

It speaks the API of docs/providers/imo.md: `POST {base}/send_invite` and
`POST {base}/send_notification` under the prefix `/api/simple`, with HTTP Basic auth
(a wrong or missing one is a 401) and a JSON body (a malformed one is a 400 whose JSON
says why). It messages nobody.

What it answers is steered by the last digit of the phone number:

| digit | send_invite | send_notification |
|---|---|---|
| 0 | 400 `nonexistent_user` (no Imo account) | 400 `nonexistent_user` |
| 1 | invited; never accepts, so no callback | 200 `error_code: not_subscribed` |
| 2 | HTTP 500 with a non-JSON body (Imo misbehaving) | the same |
| 3-9 | invited, then `accept_invite` after `callback_delay` | sent (`result.post_id`) |

- An invitation to a number that has already accepted is answered `error_code:
  subscribed`; one to a number invited before and not yet accepted, `error_code:
  invited`. A number accepts `callback_delay` seconds after its first invitation.
- Notifications to 3-9 are sent whether or not the number was ever invited (the
  benchmarks seed subscriptions straight into the database). For 3-6 a read receipt
  (`{"event": "read_receipt", "post_id": ...}`) follows after `callback_delay` seconds;
  7-9 are never read, and Imo gives no other signal.
- Callbacks go to the request's `callback_url`: as JSON for odd digits, as an
  `application/x-www-form-urlencoded` form for even ones (the real API's format was
  never pinned down). They are retried a few times on connection errors and 5xx, never
  delay the answer, and can be turned off (`callbacks_enabled`).

Fault injection, for reliability tests, by fraction of authenticated, well-formed
requests (drawn from a seeded random generator): `error_rate` (HTTP 500, non-JSON),
`timeout_rate` (no answer for `hang_seconds`, longer than any client time-out),
`garbage_rate` (HTTP 200, non-JSON), `rate_limited_rate` (HTTP 429 with Retry-After).

For tests: `GET /_fake/stats` (counts; `invites` tells new invitations from repeats,
`per_second` counts requests by arrival second of the wall clock for the last
`PER_SECOND_KEPT` seconds; `?phones=false` leaves out the per-phone counts, which a
benchmark's millions of numbers make large), `POST /_fake/reset` (forget everything, cancel
pending callbacks), `POST /_fake/config` (change fault rates, `callback_delay`,
`callbacks_enabled`, `seed` or `hang_seconds` at run time; answers the new settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from app.channels.base import basic_auth
from app.fakes import server
from app.fakes.credentials import FAKE_IMO_PASSWORD, FAKE_IMO_USERNAME

logger = logging.getLogger(__name__)

PREFIX: Final = "/api/simple"

INVITE: Final = "send_invite"
NOTIFICATION: Final = "send_notification"
_ENDPOINTS: Final = (INVITE, NOTIFICATION)
_FAULTS: Final = ("error", "timeout", "garbage", "rate_limited")
PER_SECOND_KEPT: Final = 600

_JSON: Final = {"Content-Type": "application/json"}
_NONEXISTENT_USER: Final = orjson.dumps(
    {"status": "error", "response": {"type": "nonexistent_user"}}
)
_INVITED: Final = orjson.dumps({"status": "success", "response": {}})
_ALREADY_INVITED: Final = orjson.dumps({"status": "success", "response": {"error_code": "invited"}})
_SUBSCRIBED: Final = orjson.dumps({"status": "success", "response": {"error_code": "subscribed"}})
_NOT_SUBSCRIBED: Final = orjson.dumps(
    {"status": "success", "response": {"error_code": "not_subscribed"}}
)
_UNAUTHORIZED: Final = orjson.dumps({"status": "error", "response": {"type": "unauthorized"}})
_GARBAGE_500: Final = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
_GARBAGE_200: Final = b"OK <html>definitely not json"


@dataclass(frozen=True, slots=True)
class FakeImoConfig:
    """How the fake behaves. Change it at run time with `POST /_fake/config`."""

    username: str = FAKE_IMO_USERNAME
    password: str = FAKE_IMO_PASSWORD
    callback_delay: float = 1.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    garbage_rate: float = 0.0
    rate_limited_rate: float = 0.0
    callbacks_enabled: bool = True
    seed: int | None = 0
    # A "timed-out" request hangs this long (or until the server shuts down).
    hang_seconds: float = 30.0
    retry_after_seconds: int = 1
    callback_concurrency: int = 100
    callback_attempts: int = 3
    callback_retry_delay: float = 0.2
    callback_timeout: float = 5.0
    # A slow provider: every answer to a send waits this long, after the message was
    # taken (and counted): a worker killed meanwhile sent it without knowing.
    answer_delay: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.timeout_rate, self.garbage_rate, self.rate_limited_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("fault rates must be between 0 and 1")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("fault rates must add up to at most 1")
        if min(self.callback_delay, self.hang_seconds, self.callback_retry_delay) < 0 or not (
            self.answer_delay >= 0
        ):
            raise ValueError("delays must not be negative")
        if self.callback_concurrency < 1 or self.callback_attempts < 1:
            raise ValueError("callback_concurrency and callback_attempts must be at least 1")

    @property
    def fault_rates(self) -> tuple[float, float, float, float]:
        return (self.error_rate, self.timeout_rate, self.garbage_rate, self.rate_limited_rate)


# What `POST /_fake/config` may change, with the JSON types it accepts.
_RUNTIME_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "error_rate": (int, float),
    "timeout_rate": (int, float),
    "garbage_rate": (int, float),
    "rate_limited_rate": (int, float),
    "callback_delay": (int, float),
    "hang_seconds": (int, float),
    "answer_delay": (int, float),
    "callbacks_enabled": (bool,),
    "seed": (int, type(None)),
}


def base_url(port: int, host: str = "127.0.0.1") -> str:
    """The base URL a client of the fake listening on `host:port` is configured with."""
    return f"http://{host}:{port}{PREFIX}"


def _bad_request(reason: str) -> web.Response:
    body = {"status": "error", "response": {"type": "bad_request", "message": reason}}
    return web.Response(status=400, body=orjson.dumps(body), headers=_JSON)


class _FakeImo:
    """The fake's state: settings, counters, invitations and pending callbacks."""

    def __init__(self, config: FakeImoConfig) -> None:
        self.config = config
        self._expected_auth = basic_auth(config.username, config.password)
        # Unique across resets and restarts: the service may keep post ids for ever.
        self._post_prefix = secrets.token_hex(4)
        self._post_numbers = itertools.count(1)
        self._closing = asyncio.Event()
        self._semaphore = asyncio.Semaphore(config.callback_concurrency)
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.reset()

    def reset(self) -> None:
        for task in self._callback_tasks:
            task.cancel()
        self._callback_tasks.clear()
        self._rng = random.Random(self.config.seed)
        # phone -> loop time at which it accepts its invitation (inf: never).
        self._accepts_at: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.answers: dict[str, Counter[str]] = {endpoint: Counter() for endpoint in _ENDPOINTS}
        self.phones: dict[str, Counter[str]] = {endpoint: Counter() for endpoint in _ENDPOINTS}
        self.delivered: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.callbacks: Counter[str] = Counter()
        # "new": invitations that invite; "repeat": answered invited/subscribed again.
        self.invites: Counter[str] = Counter()
        self.per_second: dict[str, Counter[int]] = {endpoint: Counter() for endpoint in _ENDPOINTS}

    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Apply `changes` (validated by FakeImoConfig); a new `seed` restarts the draws."""
        self.config = dataclasses.replace(self.config, **changes)
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)

    # --- the partner API -------------------------------------------------------------

    async def send_invite(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, INVITE)

    async def send_notification(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, NOTIFICATION)

    async def _answer(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        self.requests[endpoint] += 1
        self._count_second(endpoint)
        response = await self._respond(request, endpoint)
        if self.config.answer_delay:
            await asyncio.sleep(self.config.answer_delay)
        self.answers[endpoint][str(response.status)] += 1
        return response

    async def _respond(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        if request.headers.get("Authorization") != self._expected_auth:
            return web.Response(
                status=401,
                body=_UNAUTHORIZED,
                headers={**_JSON, "WWW-Authenticate": 'Basic realm="imo"'},
            )
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _bad_request("the body is not JSON")
        if not isinstance(payload, dict):
            return _bad_request("the body is not a JSON object")
        phone = payload.get("phone")
        if not isinstance(phone, str) or not phone[-1:].isdigit():
            return _bad_request("phone must be a string ending in a digit")
        if not isinstance(payload.get("msg"), str):
            return _bad_request("msg must be a string")
        callback_url = payload.get("callback_url", "")
        if not isinstance(callback_url, str):
            return _bad_request("callback_url must be a string")
        self.phones[endpoint][phone] += 1

        fault = self._draw_fault()
        if fault is not None:
            return await self._fault(fault)

        digit = int(phone[-1])
        if digit == 0:
            return web.Response(status=400, body=_NONEXISTENT_USER, headers=_JSON)
        if digit == 2:
            return web.Response(status=500, body=_GARBAGE_500, content_type="text/html")
        if endpoint == INVITE:
            return web.Response(body=self._invite(phone, digit, callback_url), headers=_JSON)
        if digit == 1:
            return web.Response(body=_NOT_SUBSCRIBED, headers=_JSON)
        post_id = f"{self._post_prefix}-{next(self._post_numbers)}"
        self.delivered[phone] += 1
        if digit <= 6 and callback_url:
            self._schedule_callback(
                callback_url, {"event": "read_receipt", "post_id": post_id}, digit
            )
        body = orjson.dumps({"status": "success", "response": {"result": {"post_id": post_id}}})
        return web.Response(body=body, headers=_JSON)

    def _invite(self, phone: str, digit: int, callback_url: str) -> bytes:
        now = asyncio.get_running_loop().time()
        accepts_at = self._accepts_at.get(phone)
        if accepts_at is not None:
            self.invites["repeat"] += 1
            return _SUBSCRIBED if now >= accepts_at else _ALREADY_INVITED
        self.invites["new"] += 1
        if digit == 1:
            self._accepts_at[phone] = math.inf
            return _INVITED
        self._accepts_at[phone] = now + self.config.callback_delay
        if callback_url:
            self._schedule_callback(callback_url, {"event": "accept_invite"}, digit)
        return _INVITED

    def _draw_fault(self) -> str | None:
        rates = self.config.fault_rates
        if not any(rates):
            return None
        draw = self._rng.random()
        for fault, rate in zip(_FAULTS, rates, strict=True):
            if draw < rate:
                return fault
            draw -= rate
        return None

    async def _fault(self, fault: str) -> web.Response:
        self.faults[fault] += 1
        if fault == "error":
            return web.Response(status=500, body=_GARBAGE_500, content_type="text/html")
        if fault == "garbage":
            return web.Response(body=_GARBAGE_200, content_type="text/plain")
        if fault == "rate_limited":
            return web.Response(
                status=429,
                text="Too Many Requests",
                headers={"Retry-After": str(self.config.retry_after_seconds)},
            )
        # "timeout": hang past any client's time-out, but let a shutdown end it at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.config.hang_seconds)
        return web.Response(status=504, text="Gateway Timeout")

    # --- callbacks ---------------------------------------------------------------------

    def _schedule_callback(self, url: str, event: dict[str, str], digit: int) -> None:
        if not self.config.callbacks_enabled:
            return
        self.callbacks["scheduled"] += 1
        as_json = digit % 2 == 1
        task = asyncio.create_task(
            self._deliver_callback(url, event, as_json, self.config.callback_delay)
        )
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _deliver_callback(
        self, url: str, event: dict[str, str], as_json: bool, delay: float
    ) -> None:
        """POST one callback, retrying connection errors and 5xx. Never raises."""
        try:
            await asyncio.sleep(delay)
            async with self._semaphore:
                outcome = await self._post_callback(url, event, as_json)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fake Imo could not deliver a callback")
            outcome = "failed"
        self.callbacks[outcome] += 1

    async def _post_callback(self, url: str, event: dict[str, str], as_json: bool) -> str:
        session = self._session
        if session is None:
            return "failed"
        timeout = aiohttp.ClientTimeout(total=self.config.callback_timeout)
        for attempt in range(self.config.callback_attempts):
            if attempt:
                await asyncio.sleep(self.config.callback_retry_delay)
            try:
                if as_json:
                    request = session.post(
                        url, data=orjson.dumps(event), headers=_JSON, timeout=timeout
                    )
                else:
                    request = session.post(url, data=event, timeout=timeout)
                async with request as response:
                    await response.read()
            except aiohttp.InvalidURL:
                return "failed"
            except (aiohttp.ClientError, TimeoutError):
                continue
            if response.status < 300:
                return "sent"
            if response.status < 500:
                # The service refused it (a bad token, say): repeating will not help.
                return "rejected"
        return "failed"

    async def client_session(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the one session every callback shares."""
        connector = aiohttp.TCPConnector(limit=self.config.callback_concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            yield
            self._session = None

    async def on_shutdown(self, app: web.Application) -> None:
        self._closing.set()
        tasks = list(self._callback_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- observability for tests -------------------------------------------------------

    def _count_second(self, endpoint: str) -> None:
        second = int(time.time())
        seconds = self.per_second[endpoint]
        if second not in seconds and len(seconds) >= PER_SECOND_KEPT:
            for old in sorted(seconds)[: len(seconds) - PER_SECOND_KEPT + 1]:
                del seconds[old]
        seconds[second] += 1

    async def stats(self, request: web.Request) -> web.Response:
        with_phones = request.query.get("phones", "true").lower() not in ("false", "0", "no")
        body = {
            "requests": {endpoint: self.requests[endpoint] for endpoint in _ENDPOINTS},
            "answers": self.answers,
            "phones": self.phones if with_phones else {},
            "delivered": self.delivered if with_phones else {},
            "invites": {"new": self.invites["new"], "repeat": self.invites["repeat"]},
            "per_second": {
                endpoint: {str(second): n for second, n in sorted(seconds.items())}
                for endpoint, seconds in self.per_second.items()
            },
            "faults": {fault: self.faults[fault] for fault in _FAULTS},
            "callbacks": {
                "scheduled": self.callbacks["scheduled"],
                "sent": self.callbacks["sent"],
                "rejected": self.callbacks["rejected"],
                "failed": self.callbacks["failed"],
                "pending": len(self._callback_tasks),
            },
        }
        return web.Response(body=orjson.dumps(body), headers=_JSON)

    async def reset_endpoint(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=b'{"status":"reset"}', headers=_JSON)

    async def config_endpoint(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _bad_request("the body is not JSON")
        if not isinstance(changes, dict):
            return _bad_request("the body is not a JSON object")
        for name, value in changes.items():
            types = _RUNTIME_FIELDS.get(name)
            if types is None:
                return _bad_request(f"{name} cannot be changed; only {sorted(_RUNTIME_FIELDS)}")
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return _bad_request(f"{name} has the wrong type")
        try:
            self.reconfigure(changes)
        except ValueError as error:
            return _bad_request(str(error))
        settings = {name: getattr(self.config, name) for name in _RUNTIME_FIELDS}
        return web.Response(body=orjson.dumps(settings), headers=_JSON)


FAKE_IMO_KEY: Final = web.AppKey("fake_imo", _FakeImo)


def create_app(config: FakeImoConfig) -> web.Application:
    fake = _FakeImo(config)
    app = web.Application()
    app[FAKE_IMO_KEY] = fake
    app.router.add_post(f"{PREFIX}/{INVITE}", fake.send_invite)
    app.router.add_post(f"{PREFIX}/{NOTIFICATION}", fake.send_notification)
    app.router.add_get("/_fake/stats", fake.stats)
    app.router.add_post("/_fake/reset", fake.reset_endpoint)
    app.router.add_post("/_fake/config", fake.config_endpoint)
    app.cleanup_ctx.append(fake.client_session)
    app.on_shutdown.append(fake.on_shutdown)
    return app


async def start_fake_imo(
    config: FakeImoConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the fake on `host:port` (0: a free port). Stop it with `runner.cleanup()`."""
    return await server.start(create_app(config), host, port)


def run(host: str, port: int, config: FakeImoConfig) -> None:
    """Serve the fake until SIGINT or SIGTERM (the `notify fake-imo` command)."""
    server.serve(lambda: create_app(config), host, port, "fake Imo", PREFIX)
