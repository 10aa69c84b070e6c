"""`notify bench callbacks`: Imo read receipts and signed Twilio statuses posted at the API
by a load generator in another process; every one must be reflected in the database.

`--history H`: each run's database is a copy of a template holding H older
notifications and attempts (app/bench/history.py), as for `notify bench dispatch`; the
callbacks' own attempts then take the ids after the history's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import embedded
from app.bench import history as bench_history
from app.bench import webhooks as bench_webhooks
from app.bench.common import (
    CpuSeconds,
    PeakMemory,
    Result,
    compare,
    console,
    drop_database,
    fakes_and_env,
    fresh_database,
    run_module,
    server_pid,
)
from app.config import get_settings
from app.webhooks import service as webhook_service

# Notification i's id: time-ordered as the service makes them (app/ids.py), one
# millisecond apart from :ms on, its other bits from i: the attempt's insert makes the
# same one.
_NOTIFICATION_ID = (
    "CAST(lpad(to_hex(CAST(:ms AS bigint) + i), 12, '0') || '7'"
    " || substr(md5('n' || i), 14, 3) || '8' || substr(md5('n' || i), 18, 15) AS uuid)"
)
# N sent notifications, each with one sent attempt, ids first..first + N - 1 (after any
# history's): even attempt ids on Imo, odd on SMS.
SEED = [
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, reminder_consent)
    SELECT 'c-' || i, 'Patient', '[]'::jsonb, '+8801711000003', 'BD', 'en', 'Asia/Dhaka',
           'granted'
    FROM generate_series(CAST(:first AS bigint), CAST(:first AS bigint) + :n - 1) AS i
    """,
    f"""
    INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables, title,
                               body, state, due_at, expires_at, channel_index, retry_count,
                               sent_at)
    SELECT {_NOTIFICATION_ID}, 'c-' || i, 'appointment_reminder', 'appointment_reminder.basic',
           'en', '{{}}'::jsonb, 'Reminder', 'Text', 'sent', now(), now() + interval '4 days',
           0, 0, now()
    FROM generate_series(CAST(:first AS bigint), CAST(:first AS bigint) + :n - 1) AS i
    """,  # noqa: S608 - constants of this module only
    f"""
    INSERT INTO delivery_attempts (id, notification_id, channel, status, provider_message_id,
                                   sent_at)
    SELECT i, {_NOTIFICATION_ID}, CASE WHEN i % 2 = 0 THEN 'imo' ELSE 'sms' END, 'sent',
           CASE WHEN i % 2 = 0 THEN 'post-' || i ELSE 'SM' || lpad(i::text, 32, '0') END, now()
    FROM generate_series(CAST(:first AS bigint), CAST(:first AS bigint) + :n - 1) AS i
    """,  # noqa: S608 - constants of this module only
]


async def seed(engine: AsyncEngine, n: int) -> int:
    """Seed N callbacks' notifications and attempts; returns the first attempt id."""
    async with engine.begin() as connection:
        first = 1 + int(
            await connection.scalar(text("SELECT COALESCE(max(id), 0) FROM delivery_attempts")) or 0
        )
        ms = int(time.time() * 1000)
        for statement in SEED:
            await connection.execute(text(statement), {"n": n, "first": first, "ms": ms})
    # As on an older table, hint bits and statistics are set before the clock starts (on
    # an empty table or a history alike: the runs compare).
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE patients, notifications, delivery_attempts"))
    return first


async def reflected(engine: AsyncEngine, first: int) -> dict[str, int]:
    """The callbacks' attempts (ids from `first`) by status, their notifications by state."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT status, count(*) FROM delivery_attempts WHERE id >= :first GROUP BY status"
            ),
            {"first": first},
        )
        attempts = {f"attempts {status}": count for status, count in rows.all()}
        rows = await connection.execute(
            text(
                "SELECT n.state, count(*) FROM delivery_attempts AS a"
                " JOIN notifications AS n ON n.id = a.notification_id"
                " WHERE a.id >= :first GROUP BY n.state"
            ),
            {"first": first},
        )
        return {**attempts, **{f"notifications {state}": count for state, count in rows.all()}}


DATABASE = "clinic_notify_bench_callbacks"


async def measure(
    n: int,
    concurrency: int,
    api_workers: int,
    webhooks: bool = False,
    history: tuple[int, str | None] = (0, None),
) -> dict[str, object]:
    """`webhooks`: an endpoint wants every `notification.*` event, so each report that
    moves a notification records one (delivered by no one here: no worker runs).
    `history`: (rows, template) the database is copied from (`history.older_history`),
    or (0, None): an empty database."""
    older, template = history
    database_url = await fresh_database(DATABASE, template)
    engine = create_async_engine(database_url)
    first = await seed(engine, n)
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
                str(first),
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
    counts = await reflected(engine, first)
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
        "history": older,
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


# What a comparison (`compare`) shows of each configuration: its medians.
FIGURES = ("accepted/s", "p99 ms", "us/cb api", "us/cb pg")


def run(
    sizes: list[int],
    concurrency: int,
    json_path: Path | None,
    api_workers: list[int] | None = None,
    webhooks: list[bool] | None = None,
    histories: list[int] | None = None,
    reuse_history: bool = False,
    repeat: int = 1,
) -> Result:
    """One row per combination (history innermost), `repeat` times over; with several
    histories, each configuration's medians next to the first history's."""
    histories = histories or [0]
    # Every history is in place before the first run: no seed between compared runs.
    templates = {
        older: asyncio.run(bench_history.older_history(older, reuse=reuse_history))[0]
        for older in dict.fromkeys(histories)
        if older
    }
    result = Result("callbacks: provider webhooks at the API, then checked in PostgreSQL")
    for _ in range(repeat):
        for n in sizes:
            for count in api_workers or [1]:
                for subscribed in webhooks or [False]:
                    for older in histories:
                        history = (older, templates.get(older))
                        result.add(
                            **asyncio.run(measure(n, concurrency, count, subscribed, history))
                        )
    if templates:  # the last copy of a history: gigabytes (the template stays)
        asyncio.run(drop_database(DATABASE))
    result.show()
    keys = ("callbacks", "webhooks", "concurrency", "api processes", "history")
    comparisons = []
    if len(set(histories)) > 1:
        comparisons.append(compare(result.rows, keys=keys, vary="history", figures=FIGURES))
        comparisons[0].show()
    result.write_json(json_path, comparisons)
    return result
