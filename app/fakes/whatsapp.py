"""A fake WhatsApp Business Cloud API: a real aiohttp server that messages nobody.

It answers `POST /{version}/{phone_number_id}/messages` as the Cloud API does (JSON,
`Authorization: Bearer <token>`), then walks each accepted message through its statuses
by POSTing webhooks to `webhook_url` (the app's one webhook, as configured at Meta),
signed with `X-Hub-Signature-256` (HMAC-SHA256 of the body with `app_secret`). Statuses
that fall due together go out in one webhook (up to `webhook_batch_size`), as Meta's do.
Each message's `biz_opaque_callback_data` is echoed in its statuses.

Steering by the last digit of `to`:

| digit | answer | status webhooks |
|---|---|---|
| `0` | 200, accepted | `failed`, code 131026 (message undeliverable: not on WhatsApp) |
| `1` | 200, accepted | `sent`, `delivered`; never read |
| `2` | HTTP 500, code 131000 | none |
| `3` | 200, accepted | `sent`, then `failed`, code 131049 (not delivered, ecosystem) |
| `4`-`9` | 200, accepted | `sent`, `delivered`, `read` |

Each status follows the one before after `callback_delay` seconds. A free-text message
(`type: text`) is refused with 131047 (re-engagement) unless the recipient wrote in the
last 24 hours: `POST /_fake/inbound` {"from", "body"[, "id"]} plays a patient writing,
opens their window and sends the signed `messages` webhook to `webhook_url`. With
`templates` set (name -> number of body parameters), an unknown template is refused
with 132001 and a wrong parameter count with 132000; unset, every template is taken.
A wrong token is a 401 with code 190.

Fault injection, drawn once per request from a seeded `random.Random` (all 0 by
default, summing to at most 1): `error_rate` (500, non-JSON, not accepted),
`timeout_rate` (no answer for 30 s, not accepted), `rate_limited_rate` (429, code 130429,
not accepted), `garbage_rate` (accepted, statuses sent, but the 200's body is not JSON).

Test hooks: `GET /_fake/stats`, `POST /_fake/reset`, `POST /_fake/config` (any field of
RUNTIME_FIELDS), as the other fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from app.channels import whatsapp
from app.fakes import server
from app.fakes.common import (
    changed_config,
    check_config,
    draw_fault,
    json_response,
    post_with_retries,
)
from app.fakes.credentials import (
    FAKE_WHATSAPP_ACCESS_TOKEN,
    FAKE_WHATSAPP_APP_SECRET,
    FAKE_WHATSAPP_PHONE_NUMBER_ID,
)

log = logging.getLogger(__name__)

HANG_SECONDS = 30.0
# WhatsApp's customer-service window after a patient's message.
WINDOW_SECONDS = 24 * 3600.0
WEBHOOK_TIMEOUT_SECONDS = 10.0

RUNTIME_FIELDS = frozenset(
    {
        "error_rate",
        "timeout_rate",
        "garbage_rate",
        "rate_limited_rate",
        "callback_delay",
        "callbacks_enabled",
        "templates",
        "webhook_url",
        "seed",
    }
)

# Last digit of the number -> the statuses its messages go through, and the error code
# of a final `failed`. Digits absent here are answered with a 500 (see _SERVER_ERROR_DIGIT).
STATUSES_BY_DIGIT: dict[str, tuple[tuple[str, ...], str | None]] = {
    "0": (("failed",), whatsapp.NOT_ON_WHATSAPP),
    "1": (("sent", "delivered"), None),
    "3": (("sent", "failed"), "131049"),
    **{digit: (("sent", "delivered", "read"), None) for digit in "456789"},
}
_SERVER_ERROR_DIGIT = "2"
_ERROR_TITLES = {
    "131026": "Message undeliverable",
    "131049": "This message was not delivered to maintain healthy ecosystem engagement.",
}
_GARBAGE_BODY = b"<html><body>502 Bad Gateway</body></html>\x00\xff"


@dataclass(frozen=True, slots=True)
class FakeWhatsAppConfig:
    phone_number_id: str = FAKE_WHATSAPP_PHONE_NUMBER_ID
    access_token: str = FAKE_WHATSAPP_ACCESS_TOKEN
    app_secret: str = FAKE_WHATSAPP_APP_SECRET
    # Where status webhooks go; empty: nowhere (counted as not sent).
    webhook_url: str = ""
    callback_delay: float = 1.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    garbage_rate: float = 0.0
    rate_limited_rate: float = 0.0
    callbacks_enabled: bool = True
    # Approved templates, name -> number of body parameters; None: any template.
    templates: dict[str, int] | None = None
    seed: int = 0
    webhook_batch_size: int = 20
    callback_concurrency: int = 100

    def __post_init__(self) -> None:
        check_config(self)
        if self.templates is not None and not (
            isinstance(self.templates, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in self.templates.values())
        ):
            raise ValueError("templates must map template names to parameter counts")
        if not isinstance(self.webhook_url, str):
            raise ValueError("webhook_url must be a URL")
        if self.webhook_batch_size < 1:
            raise ValueError("webhook_batch_size must be at least 1")

    def public(self) -> dict[str, object]:
        """The configuration without the token and the app secret."""
        fields = dataclasses.asdict(self)
        del fields["access_token"], fields["app_secret"]
        return fields


def _error(status: int, code: int, message: str, details: str = "") -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or message},
            "fbtrace_id": "Afake" + os.urandom(6).hex(),
        }
    }
    return json_response(body, status)


@dataclass(frozen=True, slots=True)
class _Status:
    message_id: str
    status: str
    recipient: str
    opaque: str
    error_code: str | None

    def webhook_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.message_id,
            "status": self.status,
            "timestamp": str(int(asyncio.get_running_loop().time())),
            "recipient_id": self.recipient,
        }
        if self.opaque:
            item["biz_opaque_callback_data"] = self.opaque
        if self.error_code:
            title = _ERROR_TITLES.get(self.error_code, "Error")
            item["errors"] = [
                {
                    "code": int(self.error_code),
                    "title": title,
                    "message": title,
                    "error_data": {"details": title},
                }
            ]
        return item


class FakeWhatsApp:
    """The fake's state and handlers; one per `create_app`."""

    def __init__(self, config: FakeWhatsAppConfig) -> None:
        self.start_config = config
        self.config = config
        self._rng = random.Random(config.seed)
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(config.callback_concurrency)
        self._walks: set[asyncio.Task[None]] = set()
        self._posts: set[asyncio.Task[None]] = set()
        self._outbox: asyncio.Queue[_Status] = asyncio.Queue()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.responses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.to_counts: Counter[str] = Counter()
        self.template_counts: Counter[str] = Counter()
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        self.webhooks_rejected: Counter[int] = Counter()
        self.statuses_sent: Counter[str] = Counter()
        # wa_id -> when its customer-service window closes (time.monotonic()).
        self.windows: dict[str, float] = {}

    # --- the messages API -------------------------------------------------------------

    async def send_message(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = await self._send_message(request)
        self.responses[response.status] += 1
        return response

    async def _send_message(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        if request.headers.get("Authorization", "") != f"Bearer {config.access_token}":
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        if request.match_info["phone_number_id"] != config.phone_number_id:
            return _error(400, 100, "Unsupported post request: unknown phone number id")

        fault = self._draw_fault(config)
        if fault == "error":
            return web.Response(status=500, body=b"Internal Server Error\x00")
        if fault == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), HANG_SECONDS)
            return web.Response(status=503, body=b"shutting down")
        if fault == "rate_limited":
            return _error(429, 130429, "Rate limit hit", "Cloud API message throughput reached")

        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, 100, "Invalid parameter", "the body is not JSON")
        refusal = self._refusal(payload)
        if refusal is not None:
            return refusal
        to: str = payload["to"].removeprefix("+")
        if to[-1] == _SERVER_ERROR_DIGIT:
            return _error(500, 131000, "Something went wrong")

        message_id = "wamid.HBgM" + os.urandom(18).hex().upper()
        self.accepted += 1
        self.to_counts["+" + to] += 1
        if payload.get("type") == "template":
            self.template_counts[payload["template"]["name"]] += 1
        opaque = payload.get("biz_opaque_callback_data")
        if config.callbacks_enabled:
            statuses, error_code = STATUSES_BY_DIGIT[to[-1]]
            opaque = opaque if isinstance(opaque, str) else ""
            self._start_walk(_Status(message_id, "", to, opaque, error_code), statuses)

        if fault == "garbage":
            return web.Response(status=200, body=_GARBAGE_BODY, content_type="application/json")
        return json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": payload["to"], "wa_id": to}],
                "messages": [{"id": message_id, "message_status": "accepted"}],
            }
        )

    def _window_open(self, wa_id: str) -> bool:
        return self.windows.get(wa_id, 0.0) > time.monotonic()

    async def inbound(self, request: web.Request) -> web.Response:
        """A patient writes in: their window opens for 24 hours, and the signed
        `messages` webhook goes to `webhook_url` (status null when none is set)."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        sender = body.get("from") if isinstance(body, dict) else None
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(sender, str) or not isinstance(text, str):
            return json_response({"error": "give from and body as strings"}, 400)
        wa_id = sender.removeprefix("+")
        self.windows[wa_id] = time.monotonic() + WINDOW_SECONDS
        message_id = str(body.get("id") or "wamid.IN" + os.urandom(12).hex().upper())
        item = {
            "from": wa_id,
            "id": message_id,
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": text},
        }
        session, url = self._session, self.config.webhook_url
        if session is None or not url:
            return json_response({"status": None, "id": message_id})
        raw = self._webhook({"messages": [item], "contacts": [{"wa_id": wa_id}]})
        headers = {
            "Content-Type": "application/json",
            whatsapp.SIGNATURE_HEADER: whatsapp.signature(self.config.app_secret, raw),
        }
        async with session.post(url, data=raw, headers=headers) as answer:
            return json_response({"status": answer.status, "id": message_id})

    def _refusal(self, payload: Any) -> web.Response | None:
        """The Cloud API's answer to a payload it will not send, or None."""
        if not isinstance(payload, dict) or payload.get("messaging_product") != "whatsapp":
            return _error(400, 100, "Invalid parameter", "messaging_product must be whatsapp")
        to = payload.get("to")
        if not isinstance(to, str) or not to.removeprefix("+").isdigit():
            return _error(400, 100, "Invalid parameter", "to must be a phone number")
        if payload.get("type") == "text":
            if not self._window_open(to.removeprefix("+")):
                return _error(
                    400,
                    131047,
                    "Re-engagement message",
                    "More than 24 hours have passed since the recipient last replied",
                )
            text = payload.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("body"), str):
                return _error(400, 131008, "Required parameter is missing", "text.body")
            return None
        template = payload.get("template")
        if payload.get("type") != "template" or not isinstance(template, dict):
            return _error(400, 131051, "Unsupported message type")
        name = template.get("name")
        language = template.get("language")
        if not isinstance(name, str) or not isinstance(language, dict):
            return _error(400, 131008, "Required parameter is missing", "template name, language")
        known = self.config.templates
        if known is not None:
            if name not in known:
                return _error(404, 132001, "Template name does not exist in the translation")
            given = sum(
                len(component.get("parameters", []))
                for component in template.get("components", [])
                if isinstance(component, dict) and component.get("type") == "body"
            )
            if given != known[name]:
                return _error(
                    400,
                    132000,
                    "Number of parameters does not match the expected number of params",
                )
        return None

    def _draw_fault(self, config: FakeWhatsAppConfig) -> str | None:
        return draw_fault(self._rng, config, self.faults)

    # --- status webhooks --------------------------------------------------------------

    def _start_walk(self, message: _Status, statuses: tuple[str, ...]) -> None:
        task = asyncio.create_task(self._walk(message, statuses))
        self._walks.add(task)
        task.add_done_callback(self._walks.discard)

    async def _walk(self, message: _Status, statuses: tuple[str, ...]) -> None:
        """Each status after `callback_delay`; the error code only on `failed`."""
        for status in statuses:
            await asyncio.sleep(self.config.callback_delay)
            error_code = message.error_code if status == "failed" else None
            await self._outbox.put(
                dataclasses.replace(message, status=status, error_code=error_code)
            )

    async def _flush(self) -> None:
        """Posts the statuses due, many to a webhook, one webhook per batch."""
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < self.config.webhook_batch_size and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            await self._semaphore.acquire()
            task = asyncio.create_task(self._post_webhook(batch))
            self._posts.add(task)
            task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[None]) -> None:
        self._posts.discard(task)
        self._semaphore.release()

    def webhook_body(self, batch: list[_Status]) -> bytes:
        return self._webhook({"statuses": [status.webhook_item() for status in batch]})

    def _webhook(self, fields: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "WABA_FAKE",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {
                                        "display_phone_number": "15550000000",
                                        "phone_number_id": self.config.phone_number_id,
                                    },
                                    **fields,
                                },
                            }
                        ],
                    }
                ],
            }
        )

    async def _post_webhook(self, batch: list[_Status]) -> None:
        session, url = self._session, self.config.webhook_url
        if session is None or session.closed or not url:
            self.webhooks_failed += 1
            return
        body = self.webhook_body(batch)
        headers = {
            "Content-Type": "application/json",
            whatsapp.SIGNATURE_HEADER: whatsapp.signature(self.config.app_secret, body),
        }
        # The batch holds its slot of `_semaphore` already (taken by `_flush`).
        status = await post_with_retries(session, None, url, body, headers)
        if status is None:
            self.webhooks_failed += 1
        elif 200 <= status < 300:
            self.webhooks_sent += 1
            self.statuses_sent.update(s.status for s in batch)
        else:
            self.webhooks_rejected[status] += 1

    async def _cancel_walks(self) -> None:
        walks = list(self._walks)
        for task in walks:
            task.cancel()
        await asyncio.gather(*walks, return_exceptions=True)
        while not self._outbox.empty():
            self._outbox.get_nowait()

    # --- test hooks -------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "requests": self.requests,
                "accepted": self.accepted,
                "responses": {str(code): n for code, n in self.responses.items()},
                "faults": dict(self.faults),
                "to": dict(self.to_counts),
                "templates": dict(self.template_counts),
                "webhooks": {
                    "sent": self.webhooks_sent,
                    "failed": self.webhooks_failed,
                    "rejected": {str(code): n for code, n in self.webhooks_rejected.items()},
                    "statuses": dict(self.statuses_sent),
                    "pending": len(self._walks) + self._outbox.qsize() + len(self._posts),
                },
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        await self._cancel_walks()
        self.config = self.start_config
        self._rng.seed(self.config.seed)
        self._reset_counters()
        return json_response(self.config.public())

    async def change_config(self, request: web.Request) -> web.Response:
        changed = await changed_config(request, self.config, RUNTIME_FIELDS)
        if isinstance(changed, web.Response):
            return changed
        self.config, reseed = changed
        if reseed:
            self._rng.seed(self.config.seed)
        return json_response(self.config.public())

    # --- lifecycle --------------------------------------------------------------------

    async def client_session(self, app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=self.config.callback_concurrency)
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            self._flusher = asyncio.create_task(self._flush(), name="fake-whatsapp-webhooks")
            yield
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            await asyncio.gather(*self._posts, return_exceptions=True)
            self._session = None

    async def on_shutdown(self, app: web.Application) -> None:
        self._closing.set()
        await self._cancel_walks()


FAKE_WHATSAPP = web.AppKey("fake_whatsapp", FakeWhatsApp)


def create_app(config: FakeWhatsAppConfig | None = None) -> web.Application:
    fake = FakeWhatsApp(config or FakeWhatsAppConfig())
    app = web.Application()
    app[FAKE_WHATSAPP] = fake
    app.router.add_post("/{version}/{phone_number_id}/messages", fake.send_message)
    app.router.add_post("/_fake/inbound", fake.inbound)
    server.add_test_hooks(app, fake)
    return app


async def start_fake_whatsapp(
    config: FakeWhatsAppConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the fake on `host:port` (0: any free port). Stop it with `runner.cleanup()`."""
    return await server.start(create_app(config), host, port)


def run(host: str = "127.0.0.1", port: int = 0, config: FakeWhatsAppConfig | None = None) -> None:
    """Serve until SIGINT or SIGTERM (the `notify fake-whatsapp` command)."""
    server.serve(lambda: create_app(config), host, port, "fake WhatsApp")


__all__ = [
    "STATUSES_BY_DIGIT",
    "FakeWhatsApp",
    "FakeWhatsAppConfig",
    "create_app",
    "run",
    "start_fake_whatsapp",
]
