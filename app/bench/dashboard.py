"""Time the dashboard's overview on the counts of N notifications.

Seeds a fresh database's `notification_counts` directly (N notifications' worth over
90 days of hours, not N notification rows: the pages read only the counts): Bangladesh
on Imo and SMS, India on WhatsApp and SMS, three purposes, every state, fallbacks and ten
failure reasons, about 80 groups an hour. Then logs in an operator and GETs each page
through the app in this process (ASGI, no socket), `--repeats` times each; the figures
are p50 and p95 of the whole request.

    notify bench dashboard -n 10000000 [--repeats 40] [--json PATH]
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text

from app.bench.common import Result, fresh_database
from app.config import Settings
from app.dashboard import repository as dashboard_repository
from app.db.session import create_engine_and_sessionmaker
from app.main import create_app
from app.operators import service as operator_service

DATABASE = "clinic_notify_bench_dashboard"
DAYS = 90

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

PAGES = {
    "overview, 24 hours": "/dashboard/?days=1",
    "overview, 7 days": "/dashboard/?days=7",
    "overview, 30 days": "/dashboard/?days=30",
    "overview, 90 days": "/dashboard/?days=90",
    "overview, 90 days, IN, one purpose": "/dashboard/?days=90&country=IN&purpose=missed_visit",
    "imo": "/dashboard/imo",
    "experiments": "/dashboard/experiments",
    "switches": "/dashboard/switches",
}


async def measure(n: int, repeats: int) -> list[dict[str, object]]:
    database_url = await fresh_database(DATABASE)
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=2)
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
        await session.execute(
            text(
                """
                INSERT INTO notification_counts_daily
                    (day, country, channel, purpose, state, reason, fell_back, count)
                SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                       country, channel, purpose, state, reason, fell_back, sum(count)
                FROM notification_counts GROUP BY 1, 2, 3, 4, 5, 6, 7
                """
            )
        )
        await session.execute(text("ANALYZE notification_counts"))
        await session.execute(text("ANALYZE notification_counts_daily"))
        await session.commit()
        seeded = await session.scalar(text("SELECT sum(count) FROM notification_counts"))
        groups = await session.scalar(text("SELECT count(*) FROM notification_counts"))
        _, password = await operator_service.create_operator(session, "bench@clinic.test", "admin")
        await session.commit()
    await engine.dispose()

    app = create_app(Settings(database_url=database_url))
    rows: list[dict[str, object]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = (await client.get("/dashboard/login")).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert token is not None
            answer = await client.post(
                "/dashboard/login",
                data={"email": "bench@clinic.test", "password": password, "csrf_token": token[1]},
            )
            assert answer.status_code == 303, answer.text
            # Each long range twice, alternately from the hourly counts only (as before
            # the daily ones) and from the daily: the same load on both.
            for name, path in PAGES.items():
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
                dashboard_repository.READ_DAILY = True
                for way, taken in times.items():
                    taken.sort()
                    rows.append(
                        {
                            "page": name,
                            "counts read": way if path.startswith("/dashboard/?") else "",
                            "notifications": int(seeded or 0),
                            "count rows": int(groups or 0),
                            "p50 ms": statistics.median(taken),
                            "p95 ms": taken[max(0, round(0.95 * len(taken)) - 1)],
                        }
                    )
    return rows


def run(sizes: list[int], repeats: int, json_path: Path | None) -> Result:
    result = Result("dashboard: pages on the counts of N notifications")
    for n in sizes:
        for row in asyncio.run(measure(n, repeats)):
            result.add(**row)
    result.show()
    result.write_json(json_path)
    return result
