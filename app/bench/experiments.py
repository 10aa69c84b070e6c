"""Measure `GET /v1/experiments/{id}/results` (and the CSV's per-patient rows) on an
experiment of N memberships.

Seeds a fresh database set-based (`INSERT ... SELECT` over `generate_series`): N
patients and memberships in three groups (control with no reminders, one reminder,
three reminders), an appointment each, the treatment groups' notifications in a mix of
states, and their delivery attempts on Imo and SMS (Imo failures falling back to SMS).
Then times the results' two aggregate queries plus the statistics, as the endpoint runs
them, a few times over (the median is the figure, next to the CPU time of the database
backend, which does not grow when other work shares the machine), and streams the
per-patient rows of the CSV once. `--explain` prints each query's plan as it ran (EXPLAIN ANALYZE).

    notify bench experiments -n 1000000 [--explain] [--json PATH]
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.bench.common import Result, console, fresh_database
from app.db.session import create_engine_and_sessionmaker
from app.experiments import repository as experiment_repository
from app.experiments import service as experiment_service

_SEED = [
    # The plans and the experiment: control (no plan), single, cascade.
    """
    INSERT INTO reminder_plans (name, reminders, is_default) VALUES
      ('bench-single', '[{"offset_days": -1, "template": "appointment_reminder.basic"}]', false),
      ('bench-cascade', '[{"offset_days": -1, "template": "appointment_reminder.basic"},
                          {"offset_days": 0, "template": "appointment_reminder.basic"},
                          {"offset_days": 3, "template": "missed_visit.basic"}]', false)
    """,
    """
    INSERT INTO experiments (id, name, start_date, end_date, return_window_days,
                             countries, max_patients_per_day)
    VALUES (:experiment_id, 'bench', :start, :end, 15, '{BD}', NULL)
    """,
    """
    INSERT INTO experiment_groups (experiment_id, position, name, weight, reminder_plan)
    VALUES (:experiment_id, 0, 'control', 1, NULL),
           (:experiment_id, 1, 'single', 1, 'bench-single'),
           (:experiment_id, 2, 'cascade', 1, 'bench-cascade')
    """,
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, facility_id, facility_name, reminder_consent)
    SELECT 'p-' || i, 'Bench Patient', '[]'::jsonb, '+88017' || lpad(i::text, 8, '0'),
           'BD', 'bn-BD', 'Asia/Dhaka', 'f-' || (i % 500), 'Facility', 'granted'
    FROM generate_series(1, :n) AS i
    """,
    # Return rates 50%, 53%, 56% by group; about 2% evicted.
    """
    INSERT INTO experiment_memberships (experiment_id, group_id, patient_id, appointment_id,
        appointment_date, enrolled_at, active, visited_at, visited_on, evicted_at,
        evicted_reason)
    SELECT :experiment_id, g.id, 'p-' || i, 'a-' || i, v.appointment_date,
           v.appointment_date - 7, true,
           CASE WHEN v.visit_offset IS NOT NULL THEN v.appointment_date + v.visit_offset END,
           CASE WHEN v.visit_offset IS NOT NULL THEN v.appointment_date + v.visit_offset END,
           CASE WHEN i % 50 = 0 THEN now() END,
           CASE WHEN i % 50 = 0 THEN 'undeliverable' END
    FROM generate_series(1, :n) AS i
    JOIN experiment_groups AS g ON g.experiment_id = :experiment_id AND g.position = i % 3
    CROSS JOIN LATERAL (
        SELECT CAST(:start AS date) + (i % 60) AS appointment_date,
               CASE WHEN random() < 0.50 + 0.03 * (i % 3) THEN (random() * 17)::int - 2
                    WHEN random() < 0.5 THEN 16 + (random() * 20)::int END AS visit_offset
    ) AS v
    """,
    """
    INSERT INTO appointments (id, patient_id, scheduled_date, facility_id, facility_name,
                              status, reminder_plan, membership_id)
    SELECT m.appointment_id, m.patient_id, m.appointment_date, 'f-1', 'Facility',
           CASE WHEN m.visited_at IS NULL THEN 'scheduled' ELSE 'visited' END,
           g.reminder_plan, m.id
    FROM experiment_memberships AS m
    JOIN experiment_groups AS g ON g.id = m.group_id
    WHERE m.experiment_id = :experiment_id
    """,
    # The treatment groups' reminders: one each (single), three each (cascade).
    """
    INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables,
        title, body, appointment_id, remind_on, state, due_at, expires_at, channel_index,
        retry_count)
    SELECT time_ordered_uuid(), a.patient_id,
           CASE WHEN r.k = 3 THEN 'missed_visit' ELSE 'appointment_reminder' END,
           'appointment_reminder.basic', 'bn-BD', '{}'::jsonb, 'Reminder', 'Text',
           a.id, a.scheduled_date + r.offset_days,
           (ARRAY['delivered', 'read', 'sent', 'failed', 'cleared', 'delivered', 'read',
                  'expired'])[1 + (abs(hashtext(a.id || r.k)) % 8)],
           now(), now() + interval '4 days', 0, 0
    FROM appointments AS a
    JOIN experiment_memberships AS m ON m.id = a.membership_id
    JOIN experiment_groups AS g ON g.id = m.group_id
    CROSS JOIN LATERAL (VALUES (1, -1), (2, 0), (3, 3)) AS r(k, offset_days)
    WHERE m.experiment_id = :experiment_id
      AND (g.position = 2 OR (g.position = 1 AND r.k = 1))
    """,
    # Attempts: Imo for half (read, or failed and then SMS), SMS for the rest.
    """
    INSERT INTO delivery_attempts (notification_id, channel, status, provider_message_id)
    SELECT n.id, c.channel, c.status, c.channel || '-' || n.id
    FROM notifications AS n
    CROSS JOIN LATERAL (
        SELECT * FROM (VALUES
            ('imo', CASE WHEN n.state = 'read' THEN 'read' ELSE 'failed' END,
             abs(hashtext(n.id::text)) % 2 = 0 OR n.state = 'read'),
            ('sms', CASE n.state WHEN 'read' THEN NULL WHEN 'sent' THEN 'sent'
                                 ELSE n.state END,
             n.state <> 'read')
        ) AS v(channel, status, used)
        WHERE v.used AND v.status IS NOT NULL
    ) AS c
    WHERE n.state IN ('sent', 'delivered', 'read', 'failed')
    """,
]


async def seed(engine: AsyncEngine, n: int) -> uuid.UUID:
    experiment_id = uuid.uuid4()
    start = datetime.now(UTC).date() - timedelta(days=90)
    params: dict[str, Any] = {
        "experiment_id": experiment_id,
        "start": start,
        "end": start + timedelta(days=120),
        "n": n,
    }
    async with engine.begin() as connection:
        for statement in _SEED:
            began = time.perf_counter()
            await connection.execute(text(statement), params)
            name = " ".join(statement.split()[:3])
            console.print(f"  {name:<40} {time.perf_counter() - began:6.1f}s")
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE"))
    return experiment_id


async def explain(engine: AsyncEngine, experiment_id: uuid.UUID) -> None:
    """Print the plan of each query of the results, as it ran."""
    params = {"experiment_id": experiment_id, "window": 15, "today": date.today()}
    queries = {
        "members": experiment_repository.MEMBER_COUNTS,
        "reminders and attempts": experiment_repository.REMINDER_COUNTS,
    }
    async with engine.connect() as connection:
        await connection.execute(text("SET jit = off"))  # as the results turn it off
        for name, query in queries.items():
            plan = await connection.execute(
                text(f"EXPLAIN (ANALYZE, BUFFERS) {query.text}"), params
            )
            console.print(f"[bold]{name}[/bold]")
            console.print("\n".join(line for (line,) in plan), markup=False)


async def backend_process(session: AsyncSession) -> psutil.Process | None:
    """The session's PostgreSQL backend, when it runs on this machine."""
    try:
        return psutil.Process(await session.scalar(text("SELECT pg_backend_pid()")))
    except psutil.Error:
        return None


def cpu_seconds(process: psutil.Process | None) -> float:
    """CPU time the process has used: unlike the wall time, it does not grow when other
    work shares the machine. (Parallel workers' time is not included.)"""
    if process is None:
        return math.nan
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(n: int, repeats: int, *, show_plans: bool) -> dict[str, Any]:
    database_url = await fresh_database("clinic_notify_bench_experiments")
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=2)
    try:
        began = time.perf_counter()
        experiment_id = await seed(engine, n)
        seeded = time.perf_counter() - began
        async with engine.connect() as connection:
            sizes = (
                await connection.execute(
                    text(
                        "SELECT (SELECT count(*) FROM notifications), "
                        "(SELECT count(*) FROM delivery_attempts)"
                    )
                )
            ).one()
        timings, cpu = [], []
        for _ in range(repeats):
            async with sessionmaker() as session:
                backend = await backend_process(session)
                cpu_before = cpu_seconds(backend)
                began = time.perf_counter()
                results = await experiment_service.results(session, experiment_id)
                timings.append(time.perf_counter() - began)
                cpu.append(cpu_seconds(backend) - cpu_before)
        assert sum(g.enrolled for g in results.groups) == n
        load = os.getloadavg()[0]  # of the minute the results were timed in
        async with sessionmaker() as session:
            began = time.perf_counter()
            rows = 0
            async for _ in experiment_repository.patient_rows(session, experiment_id, 15):
                rows += 1
            csv_seconds = time.perf_counter() - began
        if show_plans:
            await explain(engine, experiment_id)
        return {
            "memberships": n,
            "notifications": sizes[0],
            "attempts": sizes[1],
            "seed s": seeded,
            "results first s": timings[0],
            "results median s": statistics.median(timings),
            "results best s": min(timings),
            "db cpu median s": statistics.median(cpu),
            "csv rows": rows,
            "csv rows s": csv_seconds,
            "load avg": load,
            "cpus": os.cpu_count() or 0,
        }
    finally:
        await engine.dispose()


def run(sizes: list[int], repeats: int, json_path: Path | None, *, explain: bool = False) -> Result:
    result = Result("experiments: GET /v1/experiments/{id}/results on N memberships")
    for n in sizes:
        result.add(**asyncio.run(measure(n, repeats, show_plans=explain)))
    result.show()
    result.write_json(json_path)
    return result
