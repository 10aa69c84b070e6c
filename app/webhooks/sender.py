"""The webhook sender: every worker claims due deliveries, signs and POSTs them, and
writes the outcomes back. At least once: a delivery is done only once a 2xx is written
down; receivers de-duplicate by `webhook-id` (the event id)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import sentry_sdk
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.logs import redact
from app.observability import WEBHOOK_ATTEMPTS, WEBHOOKS_DISABLED
from app.webhooks import repository as webhook_repository
from app.webhooks import urls as webhook_urls
from app.webhooks.repository import Attempted, DueDelivery

log = logging.getLogger(__name__)

EXCERPT_CHARS = 200


def payload(delivery: DueDelivery) -> bytes:
    """The Standard Webhooks body: type, timestamp, data."""
    return orjson.dumps(
        {
            "type": delivery.type,
            "timestamp": delivery.occurred_at.astimezone(UTC).isoformat(),
            "data": delivery.data,
        }
    )


def next_attempt(settings: Settings, delivery: DueDelivery, now: datetime) -> datetime | None:
    """Exponential backoff with jitter from WEBHOOK_RETRY_BASE_SECONDS, capped at
    WEBHOOK_RETRY_MAX_SECONDS; None once the event is older than WEBHOOK_GIVE_UP_HOURS."""
    ceiling = min(
        settings.webhook_retry_max_seconds,
        settings.webhook_retry_base_seconds * 2 ** min(delivery.attempts, 30),
    )
    due = now + timedelta(seconds=random.uniform(ceiling / 2, ceiling))
    if due - delivery.occurred_at > timedelta(hours=settings.webhook_give_up_hours):
        return None
    return due


class WebhookSender:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.http = http
        self.clock = clock
        self._timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.send_once()
            except Exception:
                log.exception("webhook batch failed; retrying")
                sentry_sdk.capture_exception()
                sent = 0
            if sent < self.settings.webhook_batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.dispatch_idle_seconds)

    async def send_once(self) -> int:
        """Claim, send and record one batch -> how many were claimed."""
        async with self.sessionmaker() as session:
            due = await webhook_repository.claim_due(
                session, self.settings.webhook_batch_size, self.settings.webhook_lease_seconds
            )
            await session.commit()
        if not due:
            return 0
        # In order per patient and endpoint (the claim's order); in parallel across them.
        lanes: dict[tuple[str, str | None], list[DueDelivery]] = defaultdict(list)
        for delivery in due:
            lanes[(delivery.endpoint_name, delivery.patient_id)].append(delivery)
        results = await asyncio.gather(*(self._lane(lane) for lane in lanes.values()))
        attempted = [a for lane in results for a in lane]
        disable_before = self.clock() - timedelta(hours=self.settings.webhook_disable_after_hours)
        async with self.sessionmaker() as session:
            disabled = await webhook_repository.record(session, attempted, disable_before)
            await session.commit()
        for name in disabled:
            WEBHOOKS_DISABLED.inc()
            log.warning("webhook.disabled", extra={"endpoint": name})
        return len(due)

    async def _lane(self, lane: list[DueDelivery]) -> list[Attempted]:
        return [await self._send(delivery) for delivery in lane]

    async def _send(self, delivery: DueDelivery) -> Attempted:
        body = payload(delivery)
        now = self.clock()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": str(delivery.event_id),
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(delivery.secret).sign(
                str(delivery.event_id), now, body.decode()
            ),
        }
        began = time.perf_counter()
        status: int | None = None
        error: str | None = None
        excerpt = ""
        # Checked again at every delivery: the settings or the host's addresses may have
        # changed since the URL was saved (names are checked by the connector's resolver).
        refusal = webhook_urls.delivery_refusal(delivery.url, self.settings)
        try:
            if refusal is not None:
                raise webhook_urls.TargetRefused(refusal)
            async with self.http.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                excerpt = (await response.content.read(EXCERPT_CHARS)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
            refused = exc if isinstance(exc, webhook_urls.TargetRefused) else exc.__cause__
            if isinstance(refused, webhook_urls.TargetRefused):
                error = f"refused: {refused}"
                log.warning(
                    "webhook URL refused at delivery",
                    extra={"endpoint": delivery.endpoint_name, "reason": str(refused)},
                )
        delivered = status is not None and 200 <= status < 300
        if not delivered and error is None:
            error = f"HTTP {status}"
        WEBHOOK_ATTEMPTS.labels("delivered" if delivered else "failed").inc()
        log.info(
            "webhook attempt",
            extra={
                "endpoint": delivery.endpoint_name,
                "event_id": str(delivery.event_id),
                "type": delivery.type,
                "attempt": delivery.attempts + 1,
                "status": status,
                "error": error,
                "latency_ms": round((time.perf_counter() - began) * 1000, 1),
                "response": redact(excerpt),
            },
        )
        return Attempted(
            delivery.id,
            delivery.endpoint_name,
            delivered,
            status,
            error,
            None if delivered else next_attempt(self.settings, delivery, self.clock()),
        )
