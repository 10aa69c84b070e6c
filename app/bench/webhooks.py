"""`notify bench webhooks`: N events owed to one endpoint, delivered by one sender (one
worker's) to the webhook sink in another process, the sink failing a share of them.

Measures the delivery rate (every event delivered, retries included), the sender's
memory, and what the sink saw: each event id once after de-duplication, and how many
duplicates it had to drop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bench.common import Result, fresh_database
from app.config import Settings
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import notify_command
from app.devtools.supervisor import http_ok, spawn, stop_processes
from app.embedded import free_port
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType
from app.webhooks.sender import WebhookSender

_SEED = text(
    """
    WITH endpoint AS (
        INSERT INTO webhook_endpoints (name, url, events, secret, active)
        VALUES ('bench', :url, ARRAY['message.received'], :secret, true)
    ), events AS (
        INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
        SELECT time_ordered_uuid(), 'message.received', 'p-' || i,
               jsonb_build_object('message_id', i, 'text', 'bench'), now()
        FROM generate_series(1, :n) AS i
        RETURNING id, patient_id, occurred_at
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT id, 'bench', patient_id, occurred_at, 'pending', occurred_at FROM events
    """
)


# Every notification event: what a clinic system following its reminders subscribes to.
NOTIFICATION_EVENTS = [e.value for e in EventType if e.value.startswith("notification.")]

_ENDPOINT = text(
    """
    INSERT INTO webhook_endpoints (name, url, events, secret, active)
    VALUES ('bench', :url, CAST(:events AS text[]), :secret, true)
    """
)


async def subscribe_notification_events(engine: AsyncEngine, url: str, secret: str) -> None:
    """An endpoint wanting every `notification.*` event (the benches' 'with webhooks')."""
    async with engine.begin() as connection:
        await connection.execute(
            _ENDPOINT, {"url": url, "events": NOTIFICATION_EVENTS, "secret": secret}
        )


@contextmanager
def sink_process(fail_rate: float = 0.0) -> Iterator[tuple[str, str]]:
    """`notify webhook-sink` in another process -> (its URL, its secret)."""
    secret = webhook_service.new_secret()
    port = free_port()
    sink = spawn(
        notify_command(
            "webhook-sink", "--secret", secret, "--port", str(port), "--fail-rate", str(fail_rate)
        ),
        dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{port}/_sink/events"):
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook sink did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/", secret
    finally:
        stop_processes([sink])


def run(events: int, fail_rate: float, batch: int, json_path: Path | None) -> Result:
    result = Result(f"webhooks: {events} events, sink failing {fail_rate:.0%}")
    result.add(**asyncio.run(_measure(events, fail_rate, batch)))
    result.show()
    result.write_json(json_path)
    return result


async def _measure(events: int, fail_rate: float, batch: int) -> dict[str, object]:
    database_url = await fresh_database("clinic_notify_bench_webhooks")
    secret = webhook_service.new_secret()
    port = free_port()
    sink = spawn(
        notify_command(
            "webhook-sink", "--secret", secret, "--port", str(port), "--fail-rate", str(fail_rate)
        ),
        dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sink_url = f"http://127.0.0.1:{port}"
    engine, sessionmaker = create_engine_and_sessionmaker(database_url)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"{sink_url}/_sink/events"):
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook sink did not start")
            await asyncio.sleep(0.1)
        async with sessionmaker() as session:
            await session.execute(_SEED, {"url": f"{sink_url}/", "secret": secret, "n": events})
            await session.commit()
        settings = Settings(
            database_url=database_url,
            webhook_allow_private=True,
            webhook_retry_base_seconds=0.05,
            webhook_retry_max_seconds=0.2,
            webhook_batch_size=batch,
        )
        process = psutil.Process()
        rss_start = process.memory_info().rss
        rss_peak = rss_start
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
            sender = WebhookSender(settings=settings, sessionmaker=sessionmaker, http=http)
            began = time.perf_counter()
            while True:
                claimed = await sender.send_once()
                rss_peak = max(rss_peak, process.memory_info().rss)
                if claimed:
                    continue
                async with sessionmaker() as session:
                    owed = await session.scalar(
                        text("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'")
                    )
                if not owed:
                    break
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - began
            async with http.get(f"{sink_url}/_sink/events") as answer:
                seen = await answer.json()
        async with sessionmaker() as session:
            attempts = await session.scalar(text("SELECT sum(attempts) FROM webhook_deliveries"))
            failed = await session.scalar(
                text("SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'")
            )
        unique = len({e["id"] for e in seen["events"]})
        return {
            "events": events,
            "seconds": round(seconds, 2),
            "events/s": round(events / seconds),
            "attempts": attempts,
            "sink 500s": seen["failed"],
            "unique ids at sink": unique,
            "duplicates dropped": seen["duplicates"],
            "not delivered": failed,
            "rss start MiB": round(rss_start / 2**20),
            "rss peak MiB": round(rss_peak / 2**20),
        }
    finally:
        await engine.dispose()
        stop_processes([sink])
