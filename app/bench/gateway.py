"""`notify bench gateway`: a cht-gateway poll (10 incoming SMS, 20 status updates, gzip)
answered by the app, with a million notifications in the table.

One seeding, then `rounds` series of `polls` polls each (after 10 unmeasured): a row per
round and a row of the rounds' medians, so that a noisy moment on a shared machine shows
as one odd round rather than as the figure.

The app runs in this process behind httpx's ASGI transport: the figure is the app's and
PostgreSQL's time per poll (routing, auth, body, SQL, answer), without a network.
"""

from __future__ import annotations

import asyncio
import gzip
import statistics
import time
import uuid
from pathlib import Path

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.bench.common import Result, console, fresh_database
from app.channels.base import basic_auth
from app.config import Settings
from app.devtools.environment import prepare_environment
from app.fakes.gateway import APP_HEADERS
from app.gateways import service as gateway_service
from app.main import create_app

DATABASE = "clinic_notify_bench_gateway"
PATIENTS = 10_000

# N notifications `sent`, each with an attempt; one in 50 on the gateway, in the pool.
SEED = [
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, reminder_consent)
    SELECT 'g-' || i, 'Patient', '[]'::jsonb, '+88017' || lpad(i::text, 8, '0'), 'BD', 'en',
           'Asia/Dhaka', 'granted'
    FROM generate_series(1, :patients) AS i
    """,
    """
    INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables, title,
                               body, state, due_at, expires_at, channel_index, retry_count,
                               sent_at, channel_chain)
    SELECT md5('n' || i)::uuid, 'g-' || (1 + i % :patients), 'appointment_reminder',
           'appointment_reminder.basic', 'en', '{}'::jsonb, 'Reminder', 'Visit ' || i, 'sent',
           now(), now() + interval '4 days', 0, 0, now(),
           CASE WHEN i % 50 = 0 THEN ARRAY['gateway', 'sms'] ELSE ARRAY['sms'] END
    FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO delivery_attempts (id, notification_id, channel, status, provider_message_id,
                                   sent_at, created_at)
    SELECT i, md5('n' || i)::uuid, CASE WHEN i % 50 = 0 THEN 'gateway' ELSE 'sms' END, 'sent',
           CASE WHEN i % 50 = 0 THEN md5('m' || i)::uuid::text
                ELSE 'SM' || lpad(i::text, 32, '0') END,
           now(), now() - make_interval(secs => :n - i)
    FROM generate_series(1, :n) AS i
    """,
    "SELECT setval('delivery_attempts_id_seq', :n)",
    "ANALYZE",
]


async def _seeded(n: int, reuse: bool) -> str:
    """The bench database with `n` notifications: seeded afresh, or (`reuse`) the one a
    previous run left, so that two builds can be measured in turns on one table."""
    if reuse:
        database_url, _ = prepare_environment()
        url = make_url(database_url).set(database=DATABASE).render_as_string(hide_password=False)
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            # The previous run's phones emptied the pool: every gateway message back in it.
            await connection.execute(
                text(
                    "UPDATE delivery_attempts SET gateway_id = NULL, gateway_state = NULL,"
                    " state_history = NULL, status = 'sent' WHERE channel = 'gateway'"
                )
            )
            stored = await connection.scalar(text("SELECT count(*) FROM notifications"))
            pool = await connection.scalar(
                text(
                    "SELECT count(*) FROM delivery_attempts"
                    " WHERE channel = 'gateway' AND gateway_state IS NULL"
                )
            )
        await engine.dispose()
        console.print(f"reusing {stored:,} notifications, {pool:,} in the phones' pool")
        return url
    database_url = await fresh_database(DATABASE)
    engine = create_async_engine(database_url)
    began = time.monotonic()
    async with engine.begin() as connection:
        for statement in SEED[:-1]:
            await connection.execute(text(statement), {"n": n, "patients": PATIENTS})
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("ANALYZE"))
    console.print(f"seeded {n:,} notifications in {time.monotonic() - began:.0f} s")
    await engine.dispose()
    return database_url


async def measure(n: int, polls: int, rounds: int, reuse: bool = False) -> list[dict[str, object]]:
    database_url = await _seeded(n, reuse)
    # The phone's pace is not what is measured: a full answer on every poll.
    settings = Settings(database_url=database_url, gateway_rate_per_minute=6000)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    _, secret = await gateway_service.issue_gateway(database_url, name, "BD", None)
    app = create_app(settings)
    headers = {
        **APP_HEADERS,
        "Content-Encoding": "gzip",
        "Authorization": basic_auth(name, secret),
    }
    timings: list[list[float]] = [[] for _ in range(rounds)]
    offered: list[str] = []
    statuses = ("UNSENT", "SENT", "DELIVERED")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        ) as client,
    ):
        for number in range(polls * rounds + 10):
            body = {
                "messages": [
                    {
                        "id": str(uuid.uuid4()),
                        "from": f"+88017{(number * 10 + k) % PATIENTS + 1:08d}",
                        "content": f"reply {number}.{k}",
                        "sms_sent": 1764800000000,
                        "sms_received": 1764800001000,
                    }
                    for k in range(10)
                ],
                "updates": [
                    {"id": message_id, "status": statuses[(number + k) % 3]}
                    for k, message_id in enumerate((offered * 2)[:20])
                ],
            }
            raw = gzip.compress(orjson.dumps(body))
            start = time.perf_counter()
            answer = await client.post("/gateway/api/sms", content=raw, headers=headers)
            elapsed = time.perf_counter() - start
            assert answer.status_code == 200, answer.text
            offered = [m["id"] for m in answer.json()["messages"]] or offered
            if number >= 10:  # the first polls warm the caches and the pool
                timings[(number - 10) // polls].append(elapsed * 1000)
    rows: list[dict[str, object]] = []
    for index, series in enumerate(timings, 1):
        series.sort()
        rows.append(
            {
                "notifications": n,
                "round": str(index),
                "polls": polls,
                "incoming/poll": 10,
                "updates/poll": 20,
                "p50 ms": statistics.median(series),
                "p99 ms": series[max(0, int(len(series) * 0.99) - 1)],
                "max ms": series[-1],
            }
        )
    if rounds > 1:
        rows.append(
            {
                **rows[0],
                "round": f"median of {rounds}",
                **{
                    key: statistics.median(float(str(row[key])) for row in rows)
                    for key in ("p50 ms", "p99 ms", "max ms")
                },
            }
        )
    return rows


def run(
    sizes: list[int], polls: int, rounds: int, json_path: Path | None, reuse: bool = False
) -> Result:
    result = Result("gateway: a cht-gateway poll (10 in, 20 updates) against a full table")
    for n in sizes:
        for row in asyncio.run(measure(n, polls, rounds, reuse)):
            result.add(**row)
    result.show()
    result.write_json(json_path)
    return result
