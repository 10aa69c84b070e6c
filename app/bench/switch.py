"""`notify bench switch`: pausing `country=IN` while N reminders to Indian patients are
being sent by real worker processes: how many still went out after the pause was
committed, and, once resumed, that every reminder went out exactly once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.bench.common import Result, console, fakes_and_env, fresh_database, start_workers
from app.bench.dispatch import unsettled
from app.config import get_settings
from app.switches import service as switch_service
from app.switches.scope import parse_scope

DATABASE = "clinic_notify_bench_switch"
SCOPE = "country=IN"
# After the pause, sending has stopped once the fake has seen nothing new for this long.
QUIET_SECONDS = 2.0

# One Indian patient per reminder, each with their own number (last digit 4: the fake
# Twilio accepts it), so the fake's per-number counts show any message sent twice.
SEED = [
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, reminder_consent)
    SELECT 's-' || i, 'Patient ' || i,
           jsonb_build_array(jsonb_build_object(
               'number', '+9198' || lpad(i::text, 7, '0') || '4', 'type', 'mobile')),
           '+9198' || lpad(i::text, 7, '0') || '4', 'IN', 'en', 'Asia/Kolkata', 'granted'
    FROM generate_series(0, :n - 1) AS i
    """,
    """
    INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables, title,
                               body, state, due_at, expires_at, channel_index, retry_count)
    SELECT gen_random_uuid(), 's-' || i, 'appointment_reminder', 'appointment_reminder.basic',
           'en', '{}'::jsonb, 'Appointment Reminder',
           'Dear Patient, your next visit to the clinic is on 2026-12-01.',
           'scheduled', now() + interval '1 day', now() + interval '5 days', 0, 0
    FROM generate_series(0, :n - 1) AS i
    """,
]


async def _states(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT state || CASE WHEN paused_by IS NULL THEN '' ELSE ' (held)' END, count(*)"
                " FROM notifications GROUP BY 1"
            )
        )
        return {str(state): int(count) for state, count in rows.all()}


async def _put(engine: AsyncEngine, *, paused: bool) -> int:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        _, released = await switch_service.put_switch(
            session,
            parse_scope(SCOPE),
            paused=paused,
            reason="bench",
            by="notify bench switch",
            now=datetime.now(UTC),
        )
        await session.commit()
    return released


async def measure(n: int, workers: int, batch: int, pause_at: float) -> dict[str, object]:
    database_url = await fresh_database(DATABASE)
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        for statement in SEED:
            await connection.execute(text(statement), {"n": n})
    env = {"DISPATCH_BATCH_SIZE": str(batch), "DISPATCH_IDLE_SECONDS": "0.05"}
    with fakes_and_env(database_url, get_settings().redis_url, **env) as processes:
        twilio = processes.env["TWILIO_BASE_URL"]
        await start_workers(processes, workers)

        async with httpx.AsyncClient(base_url=twilio) as fake:

            async def accepted() -> int:
                return int((await fake.get("/_fake/stats")).json()["accepted"])

            async with engine.begin() as connection:
                await connection.execute(text("UPDATE notifications SET due_at = now()"))
            while True:
                if await accepted() >= n * pause_at:
                    break
                await asyncio.sleep(0.01)
            await _put(engine, paused=True)
            paused_at = time.perf_counter()
            at_pause = await accepted()

            last, last_change = at_pause, paused_at
            while time.perf_counter() - last_change < QUIET_SECONDS:
                await asyncio.sleep(0.02)
                if (now_accepted := await accepted()) != last:
                    last, last_change = now_accepted, time.perf_counter()
            while_paused = await _states(engine)

            released = await _put(engine, paused=False)
            resumed_at = time.perf_counter()
            while await unsettled(engine):
                await asyncio.sleep(0.05)
                if time.perf_counter() - resumed_at > 600:
                    raise RuntimeError("reminders still unsettled 10 minutes after the resume")
            stats = (await fake.get("/_fake/stats")).json()
        final = await _states(engine)
    await engine.dispose()
    per_number = stats["to"]
    return {
        "reminders": n,
        "workers": workers,
        "batch": batch,
        "sent before pause": at_pause,
        "sent after pause": last - at_pause,
        "stopped within s": last_change - paused_at if last != at_pause else 0.0,
        "held while paused": while_paused.get("scheduled (held)", 0),
        "released": released,
        "sent in all": stats["accepted"],
        "sent twice": sum(1 for count in per_number.values() if count > 1),
        "lost": n - len(per_number),
        "final states": final,
    }


def run(
    sizes: list[int], workers: list[int], batch: int, pause_at: float, json_path: Path | None
) -> Result:
    result = Result(f"switch: {SCOPE} paused mid-send, then resumed")
    for n in sizes:
        for count in workers:
            console.print(f"{n:,} reminders, {count} worker(s)")
            result.add(**asyncio.run(measure(n, count, batch, pause_at)))
    result.show()
    result.write_json(json_path)
    return result
