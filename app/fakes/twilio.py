"""A fake Twilio Messages API: a real aiohttp server that messages nobody.

It answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` as Twilio does
(form-encoded `To`, `From`, `Body`, `StatusCallback`; HTTP Basic auth
`AccountSid:AuthToken`) and then walks each accepted message through its statuses
by POSTing signed status callbacks (`X-Twilio-Signature`) to its `StatusCallback`:
`sent` after `callback_delay` seconds, then the final status after another
`callback_delay`.

Steering by the last digit of `To`:

| last digit of `To` | answer | status callbacks |
|---|---|---|
| `8` | 400, code 21211 (not a valid phone number) | none |
| `7` | 201 `queued` | `sent`, then `failed`, ErrorCode 30006 (landline or unreachable carrier) |
| `6` | 201 `queued` | `sent`, then `undelivered`, ErrorCode 30003 (unreachable handset) |
| any other | 201 `queued` | `sent`, then `delivered` |

A number marked opted out (`POST /_fake/opt-outs` {"number"}) is refused with a 400,
code 21610, as Twilio refuses a recipient who replied STOP.

`POST /_fake/inbound` {"url", "from", "body"[, "sid", "to"]} plays a patient writing
in: the fake POSTs Twilio's signed inbound-message webhook to `url` and answers
{"status", "sid", "reply"}, `reply` being the text of the TwiML `<Message>` (or null).

Missing `To`, `From` or `Body` is a 400 with code 21604, 21603 or 21602; wrong
credentials a 401 with code 20003.

WhatsApp (`To` and `From` both `whatsapp:+E164`): a template is `ContentSid` (HX...) with
`ContentVariables` (a JSON object) instead of `Body`; a `Body` alone is accepted and then
fails with ErrorCode 63016 (outside the customer-service window: nobody ever wrote to
the fake). The last digit steers as in the fake WhatsApp (app/fakes/whatsapp.py), with
Twilio's codes: `0` fails with 63003 (not on WhatsApp), `1` is delivered and never read,
`2` is a 500, `3` fails with 63049, `4`-`9` are `sent`, `delivered`, then `read`.

`GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json` answers an accepted
message's resource with its status as its callbacks walk it (`queued`, then each status
`callback_delay` seconds after the one before, with `error_code` on a failure), whether
or not the callbacks are sent: with `callbacks_enabled` false it is how a lost callback
is found out (reconciliation). An unknown sid is a 404 with code 20404. The same faults
are drawn.

Fault injection, drawn once per request from a seeded `random.Random` (all 0 by
default, disjoint, summing to at most 1):

- `error_rate`: 500 with a non-JSON body; the message is not accepted.
- `timeout_rate`: no answer for 30 s (longer than any client time-out); not accepted.
- `rate_limited_rate`: 429 with code 20429 and `Retry-After: 1`; not accepted.
- `garbage_rate`: the message IS accepted (counted, callbacks sent) but the 201's body
  is not JSON: what a client must not retry blindly.

Test hooks:

- `GET /_fake/stats`: `requests`, `accepted`, `lookups` (message look-ups answered,
  and `lookups_not_found`), `responses` by status code, `faults`,
  `to` and `from` (accepted messages per number), and `callbacks`: `sent` (2xx),
  `rejected` (by the final non-2xx status), `failed` (no answer after retries) and
  `pending` (messages whose callbacks are still to come).
- `POST /_fake/reset`: back to the start: the starting configuration, zero counters,
  the RNG re-seeded, pending callbacks dropped.
- `POST /_fake/config` with a JSON object of any of `error_rate`, `timeout_rate`,
  `garbage_rate`, `rate_limited_rate`, `callback_delay`, `callbacks_enabled`, `seed`
  (re-seeds the RNG): changes them now and answers the configuration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import html
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web

from app.channels import twilio_signature
from app.channels.base import basic_auth
from app.fakes import server
from app.fakes.common import (
    changed_config,
    check_config,
    draw_fault,
    json_response,
    post_with_retries,
)
from app.fakes.credentials import FAKE_TWILIO_ACCOUNT_SID, FAKE_TWILIO_AUTH_TOKEN
from app.fakes.whatsapp import STATUSES_BY_DIGIT as WHATSAPP_STATUSES_BY_DIGIT

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
# Longer than any client time-out: the request simply never gets an answer.
HANG_SECONDS = 30.0
CALLBACK_TIMEOUT_SECONDS = 10.0

# Fields `POST /_fake/config` may change at runtime.
RUNTIME_FIELDS = frozenset(
    {
        "error_rate",
        "timeout_rate",
        "garbage_rate",
        "rate_limited_rate",
        "callback_delay",
        "answer_delay",
        "callbacks_enabled",
        "seed",
    }
)

# Last digit of `To` -> (final status, ErrorCode), for accepted messages.
_FINAL_STATUS_BY_DIGIT: dict[str, tuple[str, str | None]] = {
    "7": ("failed", "30006"),
    "6": ("undelivered", "30003"),
}
_DELIVERED: tuple[str, str | None] = ("delivered", None)
_INVALID_NUMBER_DIGIT = "8"
WHATSAPP = "whatsapp:"
# The fake WhatsApp's error codes, as Twilio reports the same failures.
_TWILIO_WHATSAPP_CODES = {"131026": "63003", "131049": "63049"}
_WHATSAPP_SERVER_ERROR_DIGIT = "2"
_OUTSIDE_WINDOW = "63016"

_GARBAGE_BODY = b"<html><body>502 Bad Gateway</body></html>\x00\xff"


@dataclass(frozen=True, slots=True)
class _Message:
    """An accepted message, to answer look-ups of it."""

    to: str
    sender: str
    body: str
    accepted_at: float  # time.monotonic()
    # Its statuses in order, and the error code of the last (as its callbacks walk it).
    walk: tuple[tuple[str, ...], str | None]


@dataclass(frozen=True, slots=True)
class FakeTwilioConfig:
    account_sid: str = FAKE_TWILIO_ACCOUNT_SID
    auth_token: str = FAKE_TWILIO_AUTH_TOKEN
    callback_delay: float = 1.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    garbage_rate: float = 0.0
    rate_limited_rate: float = 0.0
    callbacks_enabled: bool = True
    seed: int = 0
    # Status callbacks in flight at once, across all messages.
    callback_concurrency: int = 100
    # A slow provider: every answer waits this long, after the message was taken.
    answer_delay: float = 0.0

    def __post_init__(self) -> None:
        check_config(self)
        if isinstance(self.answer_delay, bool) or not self.answer_delay >= 0:
            raise ValueError("answer_delay must be a number of seconds >= 0")

    def public(self) -> dict[str, object]:
        """The configuration without the auth token."""
        fields = dataclasses.asdict(self)
        del fields["auth_token"]
        return fields


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _num_segments(body: str) -> int:
    # Plain ASCII approximates GSM-7 (160 per message, 153 per part); anything else,
    # Bengali included, goes as UCS-2 (70, or 67 per part), counted in UTF-16 units.
    if body.isascii():
        units, single, part = len(body), 160, 153
    else:
        units, single, part = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)


_TWIML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.DOTALL)


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _twiml_message(twiml: str) -> str | None:
    """The text of a TwiML answer's `<Message>`, if it has one."""
    found = _TWIML_MESSAGE.search(twiml)
    return None if found is None else html.unescape(found.group(1))


def _whatsapp_refusal(
    to: str, sender: str, content_sid: object, content_variables: object
) -> web.Response | None:
    """Twilio's answer to a WhatsApp message it will not take, or None."""
    if not sender.startswith(WHATSAPP):
        return _twilio_error(400, 63007, "Twilio could not find a Channel with the From address")
    if to[-1] == _WHATSAPP_SERVER_ERROR_DIGIT:
        return _twilio_error(500, 20500, "Internal Server Error")
    if content_sid is None:
        return None
    if not (
        isinstance(content_sid, str) and content_sid.startswith("HX") and len(content_sid) == 34
    ):
        return _twilio_error(400, 21656, "The ContentSid is invalid.")
    if content_variables is not None:
        try:
            variables = orjson.loads(str(content_variables))
        except orjson.JSONDecodeError:
            variables = None
        if not isinstance(variables, dict):
            return _twilio_error(400, 21656, "The ContentVariables Parameter is invalid.")
    return None


def _whatsapp_walk(to: str, *, free_text: bool) -> tuple[tuple[str, ...], str | None]:
    """The statuses of a WhatsApp message to `to`, and the error code of a failure."""
    if free_text:
        return ("failed",), _OUTSIDE_WINDOW
    statuses, code = WHATSAPP_STATUSES_BY_DIGIT[to[-1]]
    return statuses, _TWILIO_WHATSAPP_CODES.get(code, code) if code else None


def _rfc2822_now() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


class FakeTwilio:
    """The fake's state and handlers; one per `create_app`."""

    def __init__(self, config: FakeTwilioConfig) -> None:
        self.start_config = config
        self.config = config
        self._expected_auth = basic_auth(config.account_sid, config.auth_token)
        self._rng = random.Random(config.seed)
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(config.callback_concurrency)
        self._walks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.responses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.to_counts: Counter[str] = Counter()
        self.from_counts: Counter[str] = Counter()
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_rejected: Counter[int] = Counter()
        self.lookups = 0
        self.lookups_not_found = 0
        self.messages: dict[str, _Message] = {}
        self.opted_out: set[str] = set()

    # --- the Messages API -------------------------------------------------------------

    async def create_message(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(self._create_message, request)

    async def fetch_message(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(self._fetch_message, request)

    async def _counted(
        self,
        handler: Callable[[web.Request, str | None], Awaitable[web.StreamResponse]],
        request: web.Request,
    ) -> web.StreamResponse:
        """Count the request and its answer; answer bad credentials and the drawn
        `error`, `timeout` and `rate_limited` faults here; else hand the request and the
        fault drawn (`garbage` or None) on."""
        self.requests += 1
        refusal = await self._refusal(request)
        if isinstance(refusal, web.StreamResponse):
            response = refusal
        else:
            response = await handler(request, refusal)
            if config_delay := self.config.answer_delay:
                await asyncio.sleep(config_delay)
        self.responses[response.status] += 1
        return response

    async def _refusal(self, request: web.Request) -> web.StreamResponse | str | None:
        config = self.config
        if request.match_info["account_sid"] != config.account_sid or not self._authorized(
            request.headers.get("Authorization", "")
        ):
            return _twilio_error(401, 20003, "Authenticate")
        fault = self._draw_fault(config)
        if fault == "error":
            return web.Response(
                status=500, body=b"Internal Server Error\x00", content_type="text/html"
            )
        if fault == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), HANG_SECONDS)
            return web.Response(status=503, body=b"shutting down")
        if fault == "rate_limited":
            response = _twilio_error(429, 20429, "Too Many Requests")
            response.headers["Retry-After"] = "1"
            return response
        return fault

    async def _create_message(self, request: web.Request, fault: str | None) -> web.StreamResponse:
        config = self.config
        form = await request.post()
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        if not isinstance(to, str) or not to:
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not isinstance(sender, str) or not sender:
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        on_whatsapp = to.startswith(WHATSAPP)
        content_sid = form.get("ContentSid")
        if on_whatsapp:
            refusal = _whatsapp_refusal(to, sender, content_sid, form.get("ContentVariables"))
            if refusal is not None:
                return refusal
            if isinstance(content_sid, str) and not body:
                body = f"<template {content_sid}>"
        if not isinstance(body, str) or not body:
            return _twilio_error(400, 21602, "Message body is required.")
        if to in self.opted_out:
            return _twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        if not on_whatsapp and to[-1] == _INVALID_NUMBER_DIGIT:
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")

        sid = "SM" + os.urandom(16).hex()
        self.accepted += 1
        self.to_counts[to] += 1
        self.from_counts[sender] += 1
        if on_whatsapp:
            walk = _whatsapp_walk(to, free_text=not content_sid)
        else:
            final, error_code = _FINAL_STATUS_BY_DIGIT.get(to[-1], _DELIVERED)
            walk = (("sent", final), error_code)
        message = _Message(to, sender, body, time.monotonic(), walk)
        self.messages[sid] = message
        callback_url = form.get("StatusCallback")
        if config.callbacks_enabled and isinstance(callback_url, str) and callback_url:
            self._start_walk(callback_url, sid, to, sender, walk)

        if fault == "garbage":
            return web.Response(status=201, body=_GARBAGE_BODY, content_type="application/json")
        return json_response(self._resource(sid, message, "queued", None), status=201)

    def _resource(
        self, sid: str, message: _Message, status: str, error_code: str | None
    ) -> dict[str, object]:
        """A message resource, as Twilio renders it."""
        now = _rfc2822_now()
        account_sid = self.config.account_sid
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json"
        return {
            "account_sid": account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": now,
            "date_sent": None if status == "queued" else now,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": int(error_code) if error_code else None,
            "error_message": None,
            "from": message.sender,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(_num_segments(message.body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": status,
            "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
            "to": message.to,
            "uri": uri,
        }

    async def _fetch_message(self, request: web.Request, fault: str | None) -> web.StreamResponse:
        sid = request.match_info["message_sid"]
        message = self.messages.get(sid)
        if message is None:
            self.lookups_not_found += 1
            return _twilio_error(
                404, 20404, f"The requested resource /Messages/{sid[:40]}.json was not found"
            )
        self.lookups += 1
        if fault == "garbage":
            return web.Response(status=200, body=_GARBAGE_BODY, content_type="application/json")
        # Where the callbacks' walk (`_walk`) is now, whether they are sent or not.
        statuses, error_code = message.walk
        delay = self.config.callback_delay
        elapsed = time.monotonic() - message.accepted_at
        reached = len(statuses) if delay <= 0 else min(int(elapsed // delay), len(statuses))
        if reached == 0:
            return json_response(self._resource(sid, message, "queued", None))
        final = reached == len(statuses)
        status = statuses[reached - 1]
        return json_response(self._resource(sid, message, status, error_code if final else None))

    def _authorized(self, header: str) -> bool:
        if header == self._expected_auth:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True).decode()
        except ValueError:
            return False
        login, _, password = credentials.partition(":")
        return (login, password) == (self.config.account_sid, self.config.auth_token)

    def _draw_fault(self, config: FakeTwilioConfig) -> str | None:
        return draw_fault(self._rng, config, self.faults)

    # --- status callbacks -------------------------------------------------------------

    def _start_walk(
        self, url: str, sid: str, to: str, sender: str, walk: tuple[tuple[str, ...], str | None]
    ) -> None:
        task = asyncio.create_task(self._walk(url, sid, to, sender, walk))
        self._walks.add(task)
        task.add_done_callback(self._walks.discard)

    async def _walk(
        self, url: str, sid: str, to: str, sender: str, walk: tuple[tuple[str, ...], str | None]
    ) -> None:
        """The statuses in order, each after `callback_delay`; the error code on the last."""
        common = {
            "AccountSid": self.config.account_sid,
            "ApiVersion": API_VERSION,
            "From": sender,
            "MessageSid": sid,
            "SmsSid": sid,
            "To": to,
        }
        statuses, error_code = walk
        try:
            for position, status in enumerate(statuses):
                await asyncio.sleep(self.config.callback_delay)
                params = {**common, "MessageStatus": status, "SmsStatus": status}
                if error_code and position == len(statuses) - 1:
                    params["ErrorCode"] = error_code
                await self._post_callback(url, params)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A callback must never take the fake down.
            log.exception("status callback walk failed")

    async def _post_callback(self, url: str, params: dict[str, str]) -> None:
        session = self._session
        if session is None or session.closed:
            self.callbacks_failed += 1
            return
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            twilio_signature.SIGNATURE_HEADER: twilio_signature.sign(
                self.config.auth_token, url, params
            ),
        }
        data = urlencode(params).encode()
        status = await post_with_retries(session, self._semaphore, url, data, headers)
        if status is None:
            self.callbacks_failed += 1
        elif 200 <= status < 300:
            self.callbacks_sent += 1
        else:
            self.callbacks_rejected[status] += 1

    async def _cancel_walks(self) -> None:
        walks = list(self._walks)
        for task in walks:
            task.cancel()
        await asyncio.gather(*walks, return_exceptions=True)

    # --- test hooks -------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "requests": self.requests,
                "accepted": self.accepted,
                "lookups": self.lookups,
                "lookups_not_found": self.lookups_not_found,
                "responses": {str(code): n for code, n in self.responses.items()},
                "faults": dict(self.faults),
                "to": dict(self.to_counts),
                "from": dict(self.from_counts),
                "callbacks": {
                    "sent": self.callbacks_sent,
                    "failed": self.callbacks_failed,
                    "rejected": {str(code): n for code, n in self.callbacks_rejected.items()},
                    "pending": len(self._walks),
                },
            }
        )

    async def opt_out(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        number = body.get("number") if body is not None else None
        if not isinstance(number, str) or not number:
            return json_response({"error": 'give the opted-out number as {"number": ...}'}, 400)
        self.opted_out.add(number)
        return json_response({"opted_out": sorted(self.opted_out)})

    async def inbound(self, request: web.Request) -> web.Response:
        """A patient writes in: Twilio's signed inbound webhook, POSTed to `url`."""
        body = await _json_body(request)
        fields = ("url", "from", "body")
        if body is None or not all(isinstance(body.get(f), str) for f in fields):
            return json_response({"error": "give url, from and body as strings"}, 400)
        sid = body.get("sid") or "SM" + os.urandom(16).hex()
        params = {
            "MessageSid": str(sid),
            "AccountSid": self.config.account_sid,
            "From": body["from"],
            "To": str(body.get("to") or "+15005550006"),
            "Body": body["body"],
            "NumMedia": "0",
        }
        url = body["url"]
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            twilio_signature.SIGNATURE_HEADER: twilio_signature.sign(
                self.config.auth_token, url, params
            ),
        }
        session = self._session
        assert session is not None
        try:
            async with session.post(
                url, data=urlencode(params).encode(), headers=headers, allow_redirects=False
            ) as answer:
                status, text = answer.status, await answer.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return json_response({"error": f"could not deliver: {type(exc).__name__}"}, 502)
        return json_response({"status": status, "sid": sid, "reply": _twiml_message(text)})

    async def reset(self, request: web.Request) -> web.Response:
        await self._cancel_walks()
        self._apply(self.start_config)
        self._reset_counters()
        return json_response(self.config.public())

    async def change_config(self, request: web.Request) -> web.Response:
        changed = await changed_config(request, self.config, RUNTIME_FIELDS)
        if isinstance(changed, web.Response):
            return changed
        config, reseed = changed
        self._apply(config, reseed=reseed)
        return json_response(self.config.public())

    def _apply(self, config: FakeTwilioConfig, *, reseed: bool = True) -> None:
        self.config = config
        if reseed:
            self._rng.seed(config.seed)

    # --- lifecycle --------------------------------------------------------------------

    async def client_session(self, app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=self.config.callback_concurrency)
        timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            yield
            self._session = None

    async def on_shutdown(self, app: web.Application) -> None:
        # Hung requests answer now, so the server does not wait for them.
        self._closing.set()
        await self._cancel_walks()


FAKE_TWILIO = web.AppKey("fake_twilio", FakeTwilio)


def create_app(config: FakeTwilioConfig | None = None) -> web.Application:
    fake = FakeTwilio(config or FakeTwilioConfig())
    app = web.Application()
    app[FAKE_TWILIO] = fake
    app.router.add_post(
        f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", fake.create_message
    )
    app.router.add_get(
        f"/{API_VERSION}/Accounts/{{account_sid}}/Messages/{{message_sid}}.json",
        fake.fetch_message,
    )
    app.router.add_post("/_fake/opt-outs", fake.opt_out)
    app.router.add_post("/_fake/inbound", fake.inbound)
    server.add_test_hooks(app, fake)
    return app


async def start_fake_twilio(
    config: FakeTwilioConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the fake on `host:port` (0: any free port). Stop it with `runner.cleanup()`."""
    return await server.start(create_app(config), host, port)


def run(host: str = "127.0.0.1", port: int = 0, config: FakeTwilioConfig | None = None) -> None:
    """Serve until SIGINT or SIGTERM (the `notify fake-twilio` command)."""
    server.serve(lambda: create_app(config), host, port, "fake Twilio")


__all__ = [
    "FakeTwilio",
    "FakeTwilioConfig",
    "create_app",
    "run",
    "start_fake_twilio",
]
