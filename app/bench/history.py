"""`notify bench history`: message history pages on a table of N notifications; and the
older history other benchmarks measure on (`older_history`: `notify bench dispatch
--history N`, `notify bench callbacks --history N`).

A fresh database is seeded in SQL with N notifications over a year (one every
365 days / N, random ids), each in a final state (nothing left to send, no attempt left
for the reconciler: a year's history, not a backlog), each with a delivery attempt once
it was sent, and the owners of their history:

- patients: N / 100 of them, about 100 messages each, and one heavy patient with
  N / 500 (`h00000000`);
- a group `camp`: 30% of all messages (broadcasts of N / 100 members each);
- events: N / 10 of them, two messages each (two trigger rules);
- staff: N / 1,000 staff members, about 100 messages each (`recipient: staff`).

For speed the seed drops the tables' secondary indexes, constraints and triggers,
inserts, then builds them again (the seed's own time is reported). The pages are then
read through the API in this process (ASGI, no socket: the query, its attempts and the
JSON, without a network's noise), each `--requests` times:

- first page: of a random owner (the big group, a random patient, event, staff member);
- deep page: a page at a random depth of the owner's history (a cursor built from a
  random message of it): of the big group (millions deep) and the heavy patient;
- following: `--requests` pages one after another along `next_cursor` in the big group;
- filtered: the big group's `failed` messages (2% of them) and the heavy patient's of
  one purpose.

Reported: p50 and p99 (ms) per kind of page.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from app import pagination
from app.auth import service as auth_service
from app.bench.common import Result, console, fresh_database
from app.config import Settings
from app.delivery import reconcile
from app.devtools.environment import prepare_environment, upgrade_head
from app.main import create_app

DATABASE = "clinic_notify_bench_history"
TABLES = ("notifications", "delivery_attempts")
PAGE = 50

PATIENTS = """
INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                      time_zone, reminder_consent, tags, attributes)
SELECT 'h' || lpad(k::text, 8, '0'), 'Patient ' || k, '[]'::jsonb,
       '+88017' || lpad(k::text, 8, '0'), 'BD', 'en', 'Asia/Dhaka', 'granted',
       ARRAY['camp'], '{}'::jsonb
FROM generate_series(0, :patients - 1) AS k
"""
STAFF = """
INSERT INTO staff (id, name, email, locale)
SELECT 's' || lpad(k::text, 8, '0'), 'Staff ' || k, 'staff' || k || '@clinic.example', 'en'
FROM generate_series(0, :staff - 1) AS k
"""
EVENTS = """
INSERT INTO events (id, type, patient_id, occurred_at, data, rule_errors)
SELECT 'e' || k, 'enrolment', 'h' || lpad((k % :patients)::text, 8, '0'),
       CAST(:start AS timestamptz) + (10 * k) * CAST(:step AS interval), '{}'::jsonb,
       '{}'::jsonb
FROM generate_series(0, :n / 10) AS k
"""
# Row i: created at start + i * step. i % 10 in (0, 1, 2): the group's (a broadcast per
# `patients` consecutive rows: each member once); 3, 4: event i / 10's two rules; 5 with
# i % 500 = 5: the heavy patient's; 6: staff member (i / 10) % staff's (by email);
# otherwise patient i % patients.
NOTIFICATIONS = """
INSERT INTO notifications (id, patient_id, staff_id, purpose, template_key, locale, variables,
  title, body, send_at, state, country, due_at, expires_at, channel_chain,
  channel_index, retry_count, sent_at, delivered_at, read_at, failure_reason,
  created_at, updated_at, event_id, rule_name, broadcast_id, group_name)
SELECT md5(i::text)::uuid,
  CASE WHEN i % 10 <> 6 THEN
  'h' || lpad((CASE WHEN i % 500 = 5 THEN 0
                    WHEN i % 10 IN (3, 4) THEN (i / 10) % :patients
                    ELSE i % :patients END)::text, 8, '0') END,
  CASE WHEN i % 10 = 6 THEN 's' || lpad(((i / 10) % :staff)::text, 8, '0') END,
  (ARRAY['anc_followup', 'health_camp', 'appointment_reminder', 'missed_visit'])[1 + i % 4],
  'bench.message', 'en', '{}'::jsonb, 'Clinic', 'Message number ' || i, t, st, 'BD',
  t, t + interval '4 days',
  CASE WHEN i % 10 = 6 THEN ARRAY['email'] ELSE ARRAY['sms'] END::varchar(20)[], 0, 0,
  CASE WHEN st IN ('sent', 'delivered', 'read', 'failed') THEN t END,
  CASE WHEN st IN ('delivered', 'read') THEN t END,
  CASE WHEN st = 'read' THEN t END,
  CASE WHEN st IN ('failed', 'denied') THEN 'sms: bench' END,
  t, t,
  CASE WHEN i % 10 IN (3, 4) THEN 'e' || (i / 10) END,
  CASE WHEN i % 10 IN (3, 4) THEN 'rule-' || (i % 10) END,
  CASE WHEN i % 10 IN (0, 1, 2) THEN md5('b' || (i / :patients))::uuid END,
  CASE WHEN i % 10 IN (0, 1, 2) THEN 'camp' END
FROM (
  SELECT i, CAST(:start AS timestamptz) + i * CAST(:step AS interval) AS t,
         CASE WHEN i % 100 < 78 THEN 'delivered' WHEN i % 100 < 88 THEN 'sent'
              WHEN i % 100 < 95 THEN 'read' WHEN i % 100 < 97 THEN 'failed'
              WHEN i % 100 < 99 THEN 'expired' ELSE 'denied' END AS st
  FROM generate_series(1, :n) AS i
) AS rows
"""
# An attempt still `sent` after a year is one the reconciler gave up on (as it does after
# MAX_CHECKS look-ups): the workers' reconcile job leaves it alone.
ATTEMPTS = """
INSERT INTO delivery_attempts (notification_id, channel, status, provider_message_id,
                               sent_at, delivered_at, read_at, failed_at, created_at,
                               updated_at, reconcile_checks, reconciled_at, error_code)
SELECT id, channel_chain[1], state, 'SM' || replace(id::text, '-', ''), sent_at, delivered_at,
       read_at,
       CASE WHEN state = 'failed' THEN sent_at END, sent_at, sent_at,
       CASE WHEN state = 'sent' THEN :checks ELSE 0 END,
       CASE WHEN state = 'sent' THEN sent_at + interval '3 hours' END,
       CASE WHEN state = 'sent' THEN 'no_final_status' END
FROM notifications WHERE state IN ('sent', 'delivered', 'read', 'failed')
"""
CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE conrelid = ANY(CAST(:tables AS regclass[])) AND contype IN ('u', 'f')
"""
INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = ANY(CAST(:tables AS regclass[])) AND NOT i.indisprimary
"""


async def _execute(connection: AsyncConnection, sql: str, **params: Any) -> float:
    began = time.perf_counter()
    await connection.execute(text(sql), params)
    return time.perf_counter() - began


# The patient with N / 500 messages (row i with i % 500 = 5), and their mobile number.
HEAVY_PATIENT = "h00000000"
HEAVY_PATIENT_MOBILE = "+8801700000000"


def patients_of(n: int) -> int:
    """How many patients the seed of N notifications makes (`h00000000` ...)."""
    return max(1_000, n // 100)


def staff_of(n: int) -> int:
    """How many staff members (`s00000000` ...): about 100 messages each."""
    return max(10, n // 1_000)


async def seed(database_url: str, n: int) -> dict[str, float]:
    """Seed N notifications; returns the seconds of each step."""
    patients = patients_of(n)
    start = datetime.now(UTC) - timedelta(days=365)
    step = timedelta(days=365) / n
    took: dict[str, float] = {}
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text("SET maintenance_work_mem = '512MB'"))
        tables = list(TABLES)
        constraints = (await connection.execute(text(CONSTRAINTS), {"tables": tables})).all()
        for table, name, _ in constraints:
            await connection.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        indexes = (await connection.execute(text(INDEXES), {"tables": tables})).all()
        for name, _ in indexes:
            await connection.execute(text(f'DROP INDEX "{name}"'))
        for table in tables:
            await connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        took["patients s"] = await _execute(connection, PATIENTS, patients=patients)
        took["staff s"] = await _execute(connection, STAFF, staff=staff_of(n))
        took["events s"] = await _execute(
            connection, EVENTS, patients=patients, n=n, start=start, step=step
        )
        took["notifications s"] = await _execute(
            connection,
            NOTIFICATIONS,
            patients=patients,
            staff=staff_of(n),
            n=n,
            start=start,
            step=step,
        )
        took["attempts s"] = await _execute(connection, ATTEMPTS, checks=reconcile.MAX_CHECKS)
        await connection.execute(
            text("INSERT INTO groups (name, filter) VALUES ('camp', '{\"tags\": [\"camp\"]}')")
        )
        began = time.perf_counter()
        for _, definition in indexes:
            await connection.execute(text(definition))
        for table, name, definition in constraints:
            await connection.execute(
                text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            )
        for table in tables:
            await connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        took["indexes s"] = time.perf_counter() - began
        took["vacuum analyze s"] = await _execute(
            connection, "VACUUM ANALYZE patients, staff, events, notifications, delivery_attempts"
        )
    await engine.dispose()
    return took


# `older_history`: the template databases, one per N, and what marks one complete. Bump
# SEED_VERSION when the seed's rows change: a template of another version is seeded again.
OLDER = "clinic_notify_bench_older_{n}"
SEED_VERSION = 2


def _older_marker(n: int) -> str:
    return f"clinic-notify bench history: {n} notifications, seed {SEED_VERSION}"


async def older_history(n: int, *, reuse: bool) -> tuple[str, dict[str, float]]:
    """A template database holding `seed`'s N older notifications and attempts, for a
    benchmark that measures on a big history: each of its runs works on a copy
    (`fresh_database(name, template=...)`), so the history survives whatever a run
    does, and every run starts from the same tables.

    `reuse`: a template an earlier command completed (same N, same seed) is kept, only
    migrated to head; otherwise (or without one) it is seeded again, which takes
    minutes per million. Returns its name and the seconds of the seed's steps (none
    when reused). The template takes connections only while it is seeded or migrated
    (a database being copied must have none), and is marked complete last: an
    interrupted seed is never reused."""
    if n < 1:
        raise ValueError(f"a history holds at least one notification, not {n}")
    name = OLDER.format(n=n)
    admin_url, _ = prepare_environment()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    took: dict[str, float] = {}
    try:
        async with admin.connect() as connection:
            found = (
                await connection.execute(
                    text(
                        "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                        " WHERE datname = :name"
                    ),
                    {"name": name},
                )
            ).first()
            if found is not None:
                # Unmarked until complete again; a template cannot be dropped.
                await connection.execute(
                    text(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false ALLOW_CONNECTIONS true')
                )
                await connection.execute(text(f'COMMENT ON DATABASE "{name}" IS NULL'))
        reused = reuse and found is not None and found[0] == _older_marker(n)
        if reused:
            console.print(f"history: reusing {name} ({n:,} notifications)")
            await asyncio.to_thread(upgrade_head, url, configure_logging=False)
        else:
            console.print(f"history: seeding {n:,} notifications into {name}")
            await fresh_database(name)
            took = await seed(url, n)
            console.print(f"history: seeded in {sum(took.values()):,.0f}s {took}")
        async with admin.connect() as connection:
            await connection.execute(
                text(f"COMMENT ON DATABASE \"{name}\" IS '{_older_marker(n)}'")
            )
            await connection.execute(
                text(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
            )
    finally:
        await admin.dispose()
    return name, took


async def _time(pages: int, request: Callable[[int], Awaitable[httpx.Response]]) -> list[float]:
    took = []
    for k in range(pages):
        began = time.perf_counter()
        answer = await request(k)
        took.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
    return took


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.99 * len(ordered)) - 1)]


async def measure(n: int, requests: int) -> dict[str, Any]:
    database_url = await fresh_database(DATABASE)
    took = await seed(database_url, n)
    patients = patients_of(n)
    _, key = await auth_service.issue_api_key(database_url, "bench")
    engine = create_async_engine(database_url)
    rng = random.Random(16)  # picks pages, not secrets
    async with engine.connect() as connection:
        stored = await connection.scalar(text("SELECT count(*) FROM notifications"))
        first, last = (
            await connection.execute(
                text("SELECT min(created_at), max(created_at) FROM notifications")
            )
        ).one()

        async def cursor_in(owner_sql: str, params: dict[str, Any]) -> str:
            """A cursor at a random depth of the owner's history."""
            at = first + (last - first) * rng.random()
            row = (
                await connection.execute(
                    text(
                        f"SELECT created_at, id FROM notifications WHERE {owner_sql} "  # noqa: S608
                        "AND created_at <= :at ORDER BY created_at DESC, id DESC LIMIT 1"
                    ),
                    {**params, "at": at},
                )
            ).one()
            return pagination.encode(row[0], row[1])

        group_cursors = [await cursor_in("group_name = 'camp'", {}) for _ in range(requests)]
        heavy_cursors = [await cursor_in("patient_id = 'h00000000'", {}) for _ in range(requests)]
        heavy = await connection.scalar(
            text("SELECT count(*) FROM notifications WHERE patient_id = 'h00000000'")
        )
        group = await connection.scalar(
            text("SELECT count(*) FROM notifications WHERE group_name = 'camp'")
        )
    await engine.dispose()

    def patient() -> str:
        return "h" + str(rng.randrange(1, patients)).zfill(8)

    app = create_app(Settings(database_url=database_url))
    figures: dict[str, list[float]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:

            def get(url: str, **params: Any) -> Awaitable[httpx.Response]:
                return client.get(url, params={"limit": PAGE, **params})

            await get("/v1/groups/camp/messages")  # warm: statements prepared
            figures["group: first page"] = await _time(
                requests, lambda k: get("/v1/groups/camp/messages")
            )
            figures["group: deep page (random depth)"] = await _time(
                requests, lambda k: get("/v1/groups/camp/messages", cursor=group_cursors[k])
            )
            following: dict[str, Any] = {}

            async def follow(k: int) -> httpx.Response:
                answer = await get("/v1/groups/camp/messages", **following)
                following["cursor"] = answer.json()["next_cursor"]
                return answer

            figures["group: following next_cursor"] = await _time(requests, follow)
            figures["group: state=failed (2%)"] = await _time(
                requests, lambda k: get("/v1/groups/camp/messages", state="failed")
            )
            figures["patient: first page (random patient)"] = await _time(
                requests, lambda k: get(f"/v1/patients/{patient()}/notifications")
            )
            figures["patient: deep page (heavy patient, random depth)"] = await _time(
                requests,
                lambda k: get("/v1/patients/h00000000/notifications", cursor=heavy_cursors[k]),
            )
            figures["patient: purpose filter (heavy patient)"] = await _time(
                requests,
                lambda k: get("/v1/patients/h00000000/notifications", purpose="missed_visit"),
            )
            figures["staff: first page (random staff member)"] = await _time(
                requests,
                lambda k: get(f"/v1/staff/s{str(rng.randrange(staff_of(n))).zfill(8)}/messages"),
            )
            figures["event: messages (random event)"] = await _time(
                requests, lambda k: get(f"/v1/events/e{rng.randrange(n // 10)}/messages")
            )
    return {
        "notifications": int(stored or 0),
        "group rows": int(group or 0),
        "heavy patient rows": int(heavy or 0),
        **took,
        "pages": {
            name: {
                "p50 ms": statistics.median(values),
                "p99 ms": _p99(values),
                "max ms": max(values),
            }
            for name, values in figures.items()
        },
    }


def run(n: int, requests: int, json_path: Path | None) -> Result:
    figures = asyncio.run(measure(n, requests))
    pages = figures.pop("pages")
    setup = Result(f"history: seeding {n:,} notifications (seconds)")
    setup.add(**figures)
    setup.show()
    result = Result(f"history pages of {PAGE} through the API (ASGI), {requests} requests each")
    for name, row in pages.items():
        result.add(page=name, **row)
    result.show()
    if json_path is not None:
        rows = {"seed": figures, "pages": result.rows}
        json_path.write_text(json.dumps({"benchmark": result.name, **rows}, indent=2))
    return result
