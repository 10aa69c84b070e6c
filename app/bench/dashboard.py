"""Time the dashboard's pages on the counts of N notifications, and (`--pages`) the
pages that read rows on seeded tables of realistic size.

Counts (always): a database's `notification_counts` and `notification_counts_daily` are
seeded directly (N notifications' worth over 90 days of hours, not N notification rows:
the overview reads only the counts): Bangladesh on Imo and SMS, India on WhatsApp and
SMS, three purposes, every state, fallbacks and ten failure reasons, about 80 groups an
hour.

Rows (`--pages`, another database): N notifications and their attempts seeded by
`notify bench history`'s seed (a year of them, N / 100 patients, the heavy patient
`h00000000` with N / 500), then in SQL: every patient's number searchable, 2,000
inbound messages of the heavy patient's and N / 1,000 of others', 5 gateway phones that
took one attempt in 20 (a few still offered to the phone), and `--deliveries` webhook
deliveries (two endpoints, half each; about 2% of one and 0.1% of the other given up, 1%
being retried, the latest 500 of each not tried yet; a third endpoint disabled). This
seed takes minutes at 10,000,000: `--reuse` measures on the database a previous run
seeded with the same N and deliveries (migrated to head first), so that it is paid once.

Then an admin operator logs in and GETs each page through the app in this process
(ASGI, no socket) `--repeats` times (after one unmeasured): p50 and p95 of the whole
request, redirects followed (a lookup is its redirect plus the patient's page).

    notify bench dashboard -n 10000000 [--repeats 40] [--pages [--deliveries 1000000]]
                           [--reuse] [--json PATH]
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.bench import history as bench_history
from app.bench.common import Result, console, database_url_of, fresh_database
from app.config import Settings
from app.dashboard import repository as dashboard_repository
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import upgrade_head
from app.main import create_app
from app.operators import service as operator_service

DATABASE = "clinic_notify_bench_dashboard"
# The rows' seed has a database of its own: a counts-only run never drops it.
PAGES_DATABASE = "clinic_notify_bench_dashboard_pages"
DAYS = 90
GATEWAYS = 5
GATEWAY_SHARE = 20  # one attempt in 20 went through a phone
HEAVY_MESSAGES = 2_000

# One row per (hour, group); `share` is the group's part of the hour's notifications.
_SEED = """
WITH groups (country, channel, purpose, state, reason, fell_back, share) AS (
    SELECT g.country, g.channel, p.purpose, g.state, g.reason, g.fell_back, g.share * p.share
    FROM (VALUES
        ('BD', 'imo', 'read', '', false, 0.20), ('BD', 'imo', 'delivered', '', false, 0.05),
        ('BD', 'imo', 'sent', '', false, 0.05), ('BD', 'sms', 'delivered', '', true, 0.08),
        ('BD', 'sms', 'delivered', '', false, 0.07), ('BD', 'sms', 'sent', '', false, 0.01),
        ('BD', '', 'scheduled', '', false, 0.02),
        ('BD', 'sms', 'failed', 'sms: 30006 landline or unreachable carrier', true, 0.01),
        ('BD', 'sms', 'failed', 'sms: 30003 unreachable handset', true, 0.005),
        ('BD', 'imo', 'denied', 'imo: not allowed', false, 0.002),
        ('BD', 'sms', 'expired', '', false, 0.003),
        ('IN', 'whatsapp', 'read', '', false, 0.20), ('IN', 'whatsapp', 'delivered', '', false, 0.07),
        ('IN', 'whatsapp', 'sent', '', false, 0.03), ('IN', 'sms', 'delivered', '', true, 0.10),
        ('IN', 'sms', 'sent', '', true, 0.01), ('IN', '', 'scheduled', '', false, 0.02),
        ('IN', 'sms', 'failed', 'sms: 30006 landline or unreachable carrier', true, 0.01),
        ('IN', 'sms', 'failed', 'sms: 30005 unknown destination handset', true, 0.005),
        ('IN', 'whatsapp', 'failed', 'whatsapp: 131026 message undeliverable', false, 0.01),
        ('IN', 'sms', 'denied', 'sms: 21610 unsubscribed recipient', true, 0.003),
        ('IN', 'sms', 'expired', '', true, 0.002),
        ('IN', 'whatsapp', 'failed', 'whatsapp: 131049 marketing limit', false, 0.002),
        ('BD', 'imo', 'failed', 'imo: 500 non-JSON answer', false, 0.002),
        ('BD', 'sms', 'denied', 'sms: 21211 invalid number', false, 0.002)
    ) AS g (country, channel, state, reason, fell_back, share)
    CROSS JOIN (VALUES ('appointment_reminder', 0.7), ('missed_visit', 0.2),
                       ('medication_refill', 0.1)) AS p (purpose, share)
)
INSERT INTO notification_counts (hour, country, channel, purpose, state, reason, fell_back, count)
SELECT h, country, channel, purpose, state, reason, fell_back,
       greatest(1, round(:per_hour * share))::bigint
FROM generate_series(:first, :last, interval '1 hour') AS h CROSS JOIN groups
"""  # noqa: E501

DAILY = """
INSERT INTO notification_counts_daily
    (day, country, channel, purpose, state, reason, fell_back, count)
SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       country, channel, purpose, state, reason, fell_back, sum(count)
FROM notification_counts GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

# What a database was seeded with, for --reuse.
MARKER = """
CREATE TABLE bench_dashboard_seed (notifications bigint, deliveries bigint,
                                   seeded_at timestamptz DEFAULT now())
"""

# The history seed leaves `phone_numbers` empty: the lookup by phone searches them.
PHONE_NUMBERS = """
UPDATE patients
SET phone_numbers = jsonb_build_array(jsonb_build_object('number', mobile_e164, 'type', 'mobile'))
"""
MESSAGES = """
INSERT INTO messages (direction, channel, provider_message_id, phone_e164, patient_id, text,
                      received_at)
SELECT 'in', 'sms', 'SMbench' || k, p.mobile_e164, p.id, 'Reply number ' || k,
       now() - (:count - k) * CAST(:step AS interval)
FROM generate_series(1, :count) AS k
JOIN patients AS p ON p.id = CASE WHEN k <= :heavy THEN :heavy_id
                                  ELSE 'h' || lpad((k % :patients)::text, 8, '0') END
"""
PHONES = """
INSERT INTO gateways (id, name, country, secret_hash, created_at, last_polled_at)
SELECT g, 'bench-phone-' || g, 'BD', repeat('0', 64), now() - interval '1 year',
       now() - make_interval(secs => 100 * g)
FROM generate_series(1, :gateways) AS g
"""
PHONES_SEQUENCE = "SELECT setval(pg_get_serial_sequence('gateways', 'id'), :gateways)"
# One attempt in GATEWAY_SHARE went through a phone; one in 1,000 of those is still
# offered to it (its queue).
GATEWAY_ATTEMPTS = """
UPDATE delivery_attempts
SET channel = 'gateway', gateway_id = 1 + (id / :share) % :gateways,
    gateway_state = CASE WHEN id % (1000 * :share) = 0 THEN 'forwarded-to-gateway'
                         WHEN status IN ('delivered', 'read') THEN 'delivered'
                         WHEN status = 'failed' THEN 'failed' ELSE 'sent' END
WHERE id % :share = 0
"""
ENDPOINTS = """
INSERT INTO webhook_endpoints (name, url, events, secret, active, failing_since, disabled_at)
VALUES ('ehr', 'https://ehr.clinic.test/hook', CAST(:types AS varchar(40)[]), 'whsec_bench',
        true, NULL, NULL),
       ('dhis2', 'https://dhis2.clinic.test/hook', CAST(:types AS varchar(40)[]), 'whsec_bench',
        true, now() - interval '2 hours', NULL),
       ('old-crm', 'https://crm.clinic.test/hook', ARRAY['message.received'], 'whsec_bench',
        false, now() - interval '3 days', now() - interval '1 day')
"""
WEBHOOK_EVENTS = """
INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
SELECT md5('w' || k)::uuid, (CAST(:types AS text[]))[1 + k % 5],
       'h' || lpad((k % :patients)::text, 8, '0'), jsonb_build_object('n', k),
       now() - (:events - k) * CAST(:step AS interval)
FROM generate_series(1, :events) AS k
"""
# Each event to `ehr` and `dhis2`: delivered, except about 2% of dhis2's and 0.1% of
# ehr's given up, 1% of dhis2's being retried, and the latest 500 of each not tried yet.
WEBHOOK_DELIVERIES = """
INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                attempts, next_attempt_at, last_status, last_error,
                                delivered_at, created_at, updated_at)
SELECT md5('w' || k)::uuid, name, 'h' || lpad((k % :patients)::text, 8, '0'), t,
       CASE WHEN kind IN ('retrying', 'new') THEN 'pending' ELSE kind END,
       CASE kind WHEN 'delivered' THEN 1 WHEN 'failed' THEN 8 WHEN 'retrying' THEN 3 ELSE 0 END,
       CASE kind WHEN 'retrying' THEN now() + interval '10 minutes' ELSE t END,
       CASE kind WHEN 'delivered' THEN 204 WHEN 'failed' THEN 500 WHEN 'retrying' THEN 503 END,
       CASE kind WHEN 'failed' THEN 'HTTP 500' WHEN 'retrying' THEN 'HTTP 503' END,
       CASE kind WHEN 'delivered' THEN t + interval '1 second' END,
       t,
       CASE WHEN kind IN ('failed', 'retrying')
            THEN t + make_interval(hours => CAST(1 + k % 5 AS int)) ELSE t END
FROM (
    SELECT k, e.name, now() - (:events - k) * CAST(:step AS interval) AS t,
           CASE WHEN k > :events - 500 THEN 'new'
                WHEN e.name = 'dhis2' AND k % 50 = 3 THEN 'failed'
                WHEN e.name = 'dhis2' AND k % 97 = 5 THEN 'retrying'
                WHEN e.name = 'ehr' AND k % 1000 = 7 THEN 'failed'
                ELSE 'delivered' END AS kind
    FROM generate_series(1, :events) AS k CROSS JOIN (VALUES ('ehr'), ('dhis2')) AS e (name)
) AS rows
"""
EVENT_TYPES = [
    "notification.sent",
    "notification.delivered",
    "notification.read",
    "notification.failed",
    "message.received",
]

COUNT_PAGES = {
    "overview, 24 hours": "/dashboard/?days=1",
    "overview, 7 days": "/dashboard/?days=7",
    "overview, 30 days": "/dashboard/?days=30",
    "overview, 90 days": "/dashboard/?days=90",
    "overview, 90 days, IN, one purpose": "/dashboard/?days=90&country=IN&purpose=missed_visit",
    "imo": "/dashboard/imo",
    "experiments": "/dashboard/experiments",
    "switches": "/dashboard/switches",
}
TYPICAL_PATIENT = "h00000042"  # about 100 notifications
ROW_PAGES = {
    "patient lookup by id (heavy patient)": f"/dashboard/patients?q={bench_history.HEAVY_PATIENT}",
    "patient lookup by phone (heavy patient)": "/dashboard/patients?q="
    + bench_history.HEAVY_PATIENT_MOBILE.replace("+", "%2B"),
    "patient page (heavy patient)": f"/dashboard/patients/{bench_history.HEAVY_PATIENT}",
    "patient page (typical patient)": f"/dashboard/patients/{TYPICAL_PATIENT}",
    "gateways": "/dashboard/gateways",
    "webhooks": "/dashboard/webhooks",
}


async def _seed_counts(database_url: str, n: int) -> None:
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    now = time.time()
    last = now - now % 3600
    first = last - (DAYS * 24 - 1) * 3600
    async with sessionmaker() as session:
        await session.execute(
            text(_SEED),
            {
                "per_hour": n / (DAYS * 24),
                "first": datetime.fromtimestamp(first, UTC),
                "last": datetime.fromtimestamp(last, UTC),
            },
        )
        await session.execute(text(DAILY))
        await session.execute(text("ANALYZE notification_counts"))
        await session.execute(text("ANALYZE notification_counts_daily"))
        await session.commit()
    await engine.dispose()


async def _timed(
    took: dict[str, float], label: str, connection: AsyncConnection, sql: str, **params: Any
) -> None:
    began = time.perf_counter()
    await connection.execute(text(sql), params)
    took[label] = took.get(label, 0.0) + time.perf_counter() - began


async def _seed_rows(database_url: str, n: int, deliveries: int) -> dict[str, float]:
    """The tables the row pages read, at the size of N notifications; -> seconds per step."""
    took = {
        f"history seed: {step}": s
        for step, s in (await bench_history.seed(database_url, n)).items()
    }
    patients = bench_history.patients_of(n)
    events = max(1_000, deliveries // 2)
    messages = HEAVY_MESSAGES + n // 1_000
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text("SET maintenance_work_mem = '512MB'"))
        await _timed(took, "phone numbers s", connection, PHONE_NUMBERS)
        await _timed(
            took,
            "messages s",
            connection,
            MESSAGES,
            count=messages,
            heavy=HEAVY_MESSAGES,
            heavy_id=bench_history.HEAVY_PATIENT,
            patients=patients,
            step=timedelta(days=365) / messages,
        )
        await _timed(took, "gateways s", connection, PHONES, gateways=GATEWAYS)
        await _timed(took, "gateways s", connection, PHONES_SEQUENCE, gateways=GATEWAYS)
        await _timed(
            took, "gateways s", connection, GATEWAY_ATTEMPTS, gateways=GATEWAYS, share=GATEWAY_SHARE
        )
        await _timed(took, "webhooks s", connection, ENDPOINTS, types=EVENT_TYPES)
        step = timedelta(days=365) / events
        await _timed(
            took,
            "webhooks s",
            connection,
            WEBHOOK_EVENTS,
            types=EVENT_TYPES,
            patients=patients,
            events=events,
            step=step,
        )
        await _timed(
            took,
            "webhooks s",
            connection,
            WEBHOOK_DELIVERIES,
            patients=patients,
            events=events,
            step=step,
        )
        await _timed(
            took,
            "vacuum analyze s",
            connection,
            "VACUUM ANALYZE patients, messages, gateways, delivery_attempts, webhook_events,"
            " webhook_deliveries",
        )
    await engine.dispose()
    # The deliveries' count deltas into their counts, as the workers' cron does.
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    async with sessionmaker() as session:
        await dashboard_repository.fold_counts(session)
        await session.commit()
    await engine.dispose()
    return took


async def _seeded_with(database_url: str) -> tuple[int, int] | None:
    """(notifications, deliveries) a previous run seeded this database with, if any."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT notifications, deliveries FROM bench_dashboard_seed")
                )
            ).first()
            return (int(row[0]), int(row[1])) if row else None
    except Exception:  # no such database or table: nothing to reuse
        return None
    finally:
        await engine.dispose()


async def _database(n: int, deliveries: int, pages: bool, reuse: bool) -> str:
    name = PAGES_DATABASE if pages else DATABASE
    wanted = (n, deliveries if pages else 0)
    if reuse:
        url = database_url_of(name)
        if await _seeded_with(url) == wanted:
            await asyncio.to_thread(upgrade_head, url, configure_logging=False)
            console.print(f"reusing {name}: {n:,} notifications, {wanted[1]:,} deliveries")
            return url
        console.print(f"{name} was not seeded with {wanted}: seeding it")
    url = await fresh_database(name)
    began = time.perf_counter()
    await _seed_counts(url, n)
    took = {"counts s": time.perf_counter() - began}
    if pages:
        took |= await _seed_rows(url, n, deliveries)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text(MARKER))
        await connection.execute(
            text("INSERT INTO bench_dashboard_seed (notifications, deliveries) VALUES (:n, :d)"),
            {"n": wanted[0], "d": wanted[1]},
        )
    await engine.dispose()
    seeding = Result(f"dashboard: seeding {name} (seconds)")
    seeding.add(**took)
    seeding.show()
    return url


_BEHIND = {
    "count rows": "SELECT count(*) FROM notification_counts",
    "heavy patient": "SELECT count(*) FROM notifications WHERE patient_id = :heavy",
    "typical patient": "SELECT count(*) FROM notifications WHERE patient_id = :typical",
    "gateway attempts": "SELECT count(*) FROM delivery_attempts WHERE gateway_id IS NOT NULL",
    "deliveries": "SELECT coalesce(sum(count), 0) FROM webhook_delivery_counts",
}


async def _rows_behind(database_url: str) -> dict[str, int]:
    """How many rows each page has behind it (what it would read without its index or
    counts)."""
    engine = create_async_engine(database_url)
    found = {}
    async with engine.connect() as connection:
        for name, sql in _BEHIND.items():
            value = await connection.scalar(
                text(sql), {"heavy": bench_history.HEAVY_PATIENT, "typical": TYPICAL_PATIENT}
            )
            found[name] = int(value or 0)
        seeded = await connection.scalar(text("SELECT sum(count) FROM notification_counts"))
        found["counted notifications"] = int(seeded or 0)
    await engine.dispose()
    return found


def _behind(page: str, rows: dict[str, int]) -> int | str:
    if page.startswith("overview"):
        return rows["count rows"]
    for words, name in (
        ("heavy patient", "heavy patient"),
        ("typical patient", "typical patient"),
        ("gateways", "gateway attempts"),
        ("webhooks", "deliveries"),
    ):
        if words in page:
            return rows[name]
    return ""


async def measure(
    n: int, repeats: int, *, pages: bool = False, deliveries: int = 1_000_000, reuse: bool = False
) -> list[dict[str, object]]:
    database_url = await _database(n, deliveries, pages, reuse)
    rows_behind = await _rows_behind(database_url)
    email = f"bench-{time.time_ns()}@clinic.test"
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    async with sessionmaker() as session:
        _, password = await operator_service.create_operator(session, email, "admin")
        await session.commit()
    await engine.dispose()

    app = create_app(Settings(database_url=database_url))
    rows: list[dict[str, object]] = []
    measured = {**COUNT_PAGES, **(ROW_PAGES if pages else {})}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", follow_redirects=True
        ) as client:
            form = (await client.get("/dashboard/login")).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert token is not None
            answer = await client.post(
                "/dashboard/login",
                data={"email": email, "password": password, "csrf_token": token[1]},
            )
            assert answer.status_code == 200 and "/login" not in str(answer.url), answer.text
            # Each long range twice, alternately from the hourly counts only (as before
            # the daily ones) and from the daily: the same load on both.
            for name, path in measured.items():
                long_range = path.startswith("/dashboard/?") and "days=1" not in path
                ways = ("hourly", "daily") if long_range else ("hourly",)
                times: dict[str, list[float]] = {way: [] for way in ways}
                for way in ways:
                    dashboard_repository.READ_DAILY = way == "daily"
                    await client.get(path)  # warm: templates compiled, statements prepared
                for _ in range(repeats):
                    for way in ways:
                        dashboard_repository.READ_DAILY = way == "daily"
                        began = time.perf_counter()
                        page = await client.get(path)
                        times[way].append((time.perf_counter() - began) * 1000)
                        assert page.status_code == 200, (path, page.status_code)
                        assert "/patients?" not in str(page.url), (path, "no patient found")
                dashboard_repository.READ_DAILY = True
                for way, taken in times.items():
                    taken.sort()
                    rows.append(
                        {
                            "page": name,
                            "counts read": way if path.startswith("/dashboard/?") else "",
                            "notifications": rows_behind["counted notifications"]
                            if name in COUNT_PAGES
                            else n,
                            "rows behind": _behind(name, rows_behind),
                            "p50 ms": statistics.median(taken),
                            "p95 ms": taken[max(0, round(0.95 * len(taken)) - 1)],
                        }
                    )
    return rows


def run(
    sizes: list[int],
    repeats: int,
    json_path: Path | None,
    *,
    pages: bool = False,
    deliveries: int = 1_000_000,
    reuse: bool = False,
) -> Result:
    result = Result(
        "dashboard: pages on the counts of N notifications" + (" and on N rows" if pages else "")
    )
    for n in sizes:
        for row in asyncio.run(
            measure(n, repeats, pages=pages, deliveries=deliveries, reuse=reuse)
        ):
            result.add(**row)
    result.show()
    result.write_json(json_path)
    return result
