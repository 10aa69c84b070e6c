"""A webhook receiver for development and tests (`notify webhook-sink`): a real aiohttp
server that verifies each delivery's Standard Webhooks signature, records it and prints
one line per event.

`POST /` (any path): 401 for a bad signature, 500 for the share `fail_rate` of
deliveries (drawn from a seeded random), else 204. `GET /_sink/events`: what was
received, in order, with a `duplicates` count (deliveries of an id already received);
`POST /_sink/reset` forgets it; `POST /_sink/config` {"fail_rate"} changes the rate.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.fakes import server
from app.fakes.common import json_response

log = logging.getLogger(__name__)


@dataclass
class WebhookSink:
    secret: str
    fail_rate: float = 0.0
    seed: int = 0
    echo: bool = True
    received: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    refused: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self._verifier = Webhook(self.secret)
        self._rng = random.Random(self.seed)

    def use_secret(self, secret: str) -> None:
        """Verify with `secret` from now on (an endpoint's is known once it is created)."""
        self.secret = secret
        self._verifier = Webhook(secret)

    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self._verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.refused += 1
            return web.Response(status=401, text="bad signature")
        if self.fail_rate and self._rng.random() < self.fail_rate:
            self.failed += 1
            return web.Response(status=500, text="failing on purpose")
        event_id = request.headers["webhook-id"]
        if event_id in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(event_id)
            self.received.append({"id": event_id, **event})
            if self.echo:
                print(orjson.dumps({"id": event_id, "type": event.get("type")}).decode())
        return web.Response(status=204)

    async def events(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "events": self.received,
                "duplicates": self.duplicates,
                "refused": self.refused,
                "failed": self.failed,
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.received.clear()
        self.seen.clear()
        self.duplicates = self.refused = self.failed = 0
        return json_response({"ok": True})

    async def config(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            rate = float(changes["fail_rate"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return json_response({"error": 'give {"fail_rate": 0..1}'}, 400)
        if not 0.0 <= rate <= 1.0:
            return json_response({"error": "fail_rate must be between 0 and 1"}, 400)
        self.fail_rate = rate
        return json_response({"fail_rate": rate})


def create_app(sink: WebhookSink) -> web.Application:
    app = web.Application()
    app.router.add_get("/_sink/events", sink.events)
    app.router.add_post("/_sink/reset", sink.reset)
    app.router.add_post("/_sink/config", sink.config)
    app.router.add_post("/{tail:.*}", sink.deliver)
    return app


async def start_webhook_sink(
    sink: WebhookSink, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the sink on `host:port` (0: any free port). Stop it with `runner.cleanup()`."""
    return await server.start(create_app(sink), host, port)


def run(sink: WebhookSink, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until SIGINT or SIGTERM (the `notify webhook-sink` command)."""
    server.serve(lambda: create_app(sink), host, port, "webhook sink")
