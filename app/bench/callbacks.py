"""`notify bench callbacks`: Imo read receipts and signed Twilio statuses posted at the API
by a load generator in another process; every one must be reflected in the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import embedded
from app.bench import webhooks as bench_webhooks
from app.bench.common import (
    CpuSeconds,
    PeakMemory,
    Result,
    console,
    fakes_and_env,
    fresh_database,
    run_module,
    server_pid,
)
from app.config import get_settings
from app.webhooks import service as webhook_service

# N sent notifications, each with one sent attempt: even attempt ids on Imo, odd on SMS.
SEED = [
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, reminder_consent)
    SELECT 'c-' || i, 'Patient', '[]'::jsonb, '+8801711000003', 'BD', 'en', 'Asia/Dhaka',
           'granted'
    FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables, title,
                               body, state, due_at, expires_at, channel_index, retry_count,
                               sent_at)
    SELECT md5('n' || i)::uuid, 'c-' || i, 'appointment_reminder', 'appointment_reminder.basic',
           'en', '{}'::jsonb, 'Reminder', 'Text', 'sent', now(), now() + interval '4 days',
           0, 0, now()
    FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO delivery_attempts (id, notification_id, channel, status, provider_message_id,
                                   sent_at)
    SELECT i, md5('n' || i)::uuid, CASE WHEN i % 2 = 0 THEN 'imo' ELSE 'sms' END, 'sent',
           CASE WHEN i % 2 = 0 THEN 'post-' || i ELSE 'SM' || lpad(i::text, 32, '0') END, now()
    FROM generate_series(1, :n) AS i
    """,
]


async def seed(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as connection:
        for statement in SEED:
            await connection.execute(text(statement), {"n": n})


async def reflected(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT status, count(*) FROM delivery_attempts GROUP BY status")
        )
        attempts = {f"attempts {status}": count for status, count in rows.all()}
        rows = await connection.execute(
            text("SELECT state, count(*) FROM notifications GROUP BY state")
        )
        return {**attempts, **{f"notifications {state}": count for state, count in rows.all()}}


DATABASE = "clinic_notify_bench_callbacks"


async def measure(
    n: int, concurrency: int, api_workers: int, webhooks: bool = False
) -> dict[str, object]:
    """`webhooks`: an endpoint wants every `notification.*` event, so each report that
    moves a notification records one (delivered by no one here: no worker runs)."""
    database_url = await fresh_database(DATABASE)
    engine = create_async_engine(database_url)
    await seed(engine, n)
    if webhooks:
        await bench_webhooks.subscribe_notification_events(
            engine, "http://127.0.0.1:9/", webhook_service.new_secret()
        )
    with fakes_and_env(database_url, get_settings().redis_url) as processes:
        port = embedded.free_port()
        api = processes.start("api", "api", "--port", str(port), "--workers", str(api_workers))
        processes.wait_http(f"http://127.0.0.1:{port}/healthz")
        env = processes.env
        server = await server_pid(database_url)
        cpu = CpuSeconds([("api", api.pid)], database=DATABASE, server=server)
        cpu.start()
        with PeakMemory(api.pid) as memory:
            load = await run_module(
                "app.bench.loadgen",
                "--api",
                f"http://127.0.0.1:{port}",
                "--first",
                "1",
                "--count",
                str(n),
                "--secret",
                env["SECRET_KEY"],
                "--twilio-token",
                env["TWILIO_AUTH_TOKEN"],
                "--public-base",
                env["PUBLIC_BASE_URL"],
                "--concurrency",
                str(concurrency),
            )
        used = cpu.stop()
    counts = await reflected(engine)
    async with engine.connect() as connection:
        events = await connection.scalar(text("SELECT count(*) FROM webhook_events"))
    await engine.dispose()
    expected_read, expected_delivered = n // 2, n - n // 2
    lost = (expected_read - counts.get("attempts read", 0)) + (
        expected_delivered - counts.get("attempts delivered", 0)
    )
    console.print(counts)
    return {
        "callbacks": n,
        "webhooks": "notification.*" if webhooks else "none",
        "concurrency": concurrency,
        "api processes": api_workers,
        "accepted/s": load["items_rate"],
        "p50 ms": load["p50_ms"],
        "p99 ms": load["p99_ms"],
        "non-2xx": sum(load["failures"].values()),
        "lost": lost,
        "peak MB api": memory.peak_mb,
        # CPU per callback: what the figure is limited by (2 cores are 2 s per second).
        "us/cb api": used.get("api", 0.0) / n * 1e6,
        "us/cb pg": used.get("postgresql", 0.0) / n * 1e6,
        "us/cb loadgen": load["cpu_seconds"] / n * 1e6,
        "webhook events": events,
    }


def run(
    sizes: list[int],
    concurrency: int,
    json_path: Path | None,
    api_workers: list[int] | None = None,
    webhooks: list[bool] | None = None,
) -> Result:
    result = Result("callbacks: provider webhooks at the API, then checked in PostgreSQL")
    for n in sizes:
        for count in api_workers or [1]:
            for subscribed in webhooks or [False]:
                result.add(**asyncio.run(measure(n, concurrency, count, subscribed)))
    result.show()
    result.write_json(json_path)
    return result
