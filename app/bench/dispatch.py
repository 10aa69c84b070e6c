"""`notify bench dispatch`: N due reminders (half Imo-subscribed, half SMS; or all SMS, or
all WhatsApp) sent end to end by real worker processes, against the bare-aiohttp
baseline on the same fakes.

`--history H`: each run's database is a copy of a template holding H older
notifications and attempts (a year of them, all final: app/bench/history.py), made once
and kept (`--reuse-history`: across commands too), so that the cost of sending on a big
table compares with an empty one (`--history 0 --history 10000000`) in one command.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
    start_workers,
)
from app.broadcasts.repository import NEW_IDS
from app.config import get_settings
from app.delivery import loop_guard

# The mixes: who the N reminders go to.
# - `imo-sms`: even i an Imo-subscribed patient (fake Imo digit 3: accepted), odd i SMS
#   (digit 4), Bangladesh;
# - `sms`: every one by SMS (Bangladesh, not on Imo); `whatsapp`: every one on WhatsApp
#   (India, fake WhatsApp digit 5: accepted). These two use the same WhatsApp-mapped
#   template and variables, so that their CPU per message compares the channels alone.
MIXES = ("imo-sms", "sms", "whatsapp")
_NUMBER = {
    "imo-sms": "'+88017' || lpad(i::text, 7, '0') || (3 + i % 2)",
    "sms": "'+88017' || lpad(i::text, 7, '0') || '4'",
    "whatsapp": "'+9198' || lpad(i::text, 7, '0') || '5'",
}
_TEMPLATE = """
    INSERT INTO templates (key, locale, title, body, whatsapp, created_at, updated_at)
    VALUES ('bench.reminder', 'en', 'Appointment Reminder',
            'Dear {patient_name}, your next visit to {facility_name} is on {appointment_date}.',
            '{"name": "appointment_reminder", "language": "en_US",
              "parameters": ["patient_name", "facility_name", "appointment_date"],
              "content_sid": "HXb5b62575e6e4ff6129ad7c8efe1f983e"}'::jsonb, now(), now())
"""
_VARIABLES = """jsonb_build_object('patient_name', 'Patient ' || i,
                       'facility_name', 'Dhaka Medical', 'appointment_date', '2026-12-01')"""


def seed_statements(mix: str, ids: str = "time-ordered") -> list[str]:
    """`ids`: a kind of NEW_IDS, the due reminders' ids."""
    number = _NUMBER[mix]
    country = "IN" if mix == "whatsapp" else "BD"
    template, variables = (
        ("appointment_reminder.basic", "'{}'::jsonb")
        if mix == "imo-sms"
        else ("bench.reminder", _VARIABLES)
    )
    statements = [
        _TEMPLATE,
        f"""
        INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                              time_zone, reminder_consent)
        SELECT 'b-' || i, 'Patient ' || i,
               jsonb_build_array(jsonb_build_object('number', {number}, 'type', 'mobile')),
               {number}, '{country}', 'en', 'Asia/Dhaka', 'granted'
        FROM generate_series(0, :n - 1) AS i
        """,  # noqa: S608 - constants of this module only
        f"""
        INSERT INTO notifications (id, patient_id, purpose, template_key, locale, variables,
                                   title, body, state, due_at, expires_at, channel_index,
                                   retry_count)
        SELECT {NEW_IDS[ids]}, 'b-' || i, 'appointment_reminder', '{template}',
               'en', {variables}, 'Appointment Reminder',
               'Dear Patient, your next visit to Dhaka Medical is on 2026-12-01.',
               'scheduled', now() + interval '1 day', now() + interval '5 days', 0, 0
        FROM generate_series(0, :n - 1) AS i
        """,  # noqa: S608 - constants of this module only
    ]
    if mix == "imo-sms":
        statements.append(
            """
            INSERT INTO imo_authorizations (patient_id, status, subscribed_at)
            SELECT 'b-' || i, 'subscribed', now() FROM generate_series(0, :n - 1, 2) AS i
            """
        )
    return statements


async def seed(
    engine: AsyncEngine, n: int, mix: str = "imo-sms", ids: str = "time-ordered"
) -> None:
    async with engine.begin() as connection:
        for statement in seed_statements(mix, ids):
            await connection.execute(text(statement), {"n": n})
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE"))


_UNSETTLED = text(
    "SELECT (SELECT count(*) FROM notifications WHERE state = 'scheduled')"
    " + (SELECT count(*) FROM notifications WHERE state = 'sending')"
)


async def unsettled(connection: AsyncConnection) -> int:
    """Scheduled or sending: read from the two partial indexes, cheap as they shrink.
    Polled on one connection: each poll ends its transaction, so the next one sees what
    was settled since."""
    count = await connection.scalar(_UNSETTLED)
    await connection.commit()
    return int(count or 0)


DATABASE = "clinic_notify_bench_dispatch"


COUNT_TRIGGERS = (
    "notification_counts_insert",
    "notification_counts_update",
    "notification_counts_delete",
)


async def set_count_triggers(engine: AsyncEngine, *, enabled: bool) -> None:
    """The dashboard's counting triggers on or off (a benchmark's comparison only: off,
    the counts no longer follow the table)."""
    action = "ENABLE" if enabled else "DISABLE"
    async with engine.begin() as connection:
        for trigger in COUNT_TRIGGERS:
            await connection.execute(text(f"ALTER TABLE notifications {action} TRIGGER {trigger}"))


async def forget_loop_guard(redis_url: str) -> None:
    """Each run starts with the loop guard's counts empty: the seed sends the same text to
    the same numbers every run, so an earlier run within 30 minutes would make this one's
    reminders `duplicate` and nothing would be sent."""
    redis = Redis.from_url(redis_url)
    try:
        batch = [key async for key in redis.scan_iter(match=f"{loop_guard.KEY_PREFIX}*")]
        for start in range(0, len(batch), 1000):
            await redis.delete(*batch[start : start + 1000])
    finally:
        await redis.aclose()


async def wal_position(engine: AsyncEngine) -> float:
    """The server's WAL position in bytes (`pg_current_wal_lsn()` from 0/0)."""
    async with engine.connect() as connection:
        position = await connection.scalar(
            text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        )
    return float(position or 0)


async def checkpoint(engine: AsyncEngine) -> None:
    """A CHECKPOINT before the clock, where the role may: the first change of a page after
    a checkpoint logs the whole page, so without it a run's WAL would depend on when the
    server last checkpointed (a database copied from a history template just did)."""
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("CHECKPOINT"))
    except DBAPIError as exc:
        console.print(f"no CHECKPOINT before the clock ({type(exc.orig).__name__})")


async def wal_since(engine: AsyncEngine, before: float) -> float:
    """WAL bytes the server wrote since `before` (a `wal_position`)."""
    return await wal_position(engine) - before


def per_message_us(cpu_seconds: float, n: int) -> float:
    return cpu_seconds / n * 1e6


async def measure(
    n: int,
    workers: int,
    concurrency: int,
    batch: int,
    measured: int | None = None,
    mix: str = "imo-sms",
    count_triggers: bool = True,
    webhooks: bool = False,
    history: tuple[int, str | None] = (0, None),
    ids: str = "time-ordered",
) -> dict[str, object]:
    """`measured` < n: time only the first `measured` sends of n due reminders (memory
    and rate on a large table without waiting for all of it). `count_triggers=False`:
    the dashboard's counting triggers disabled after the seed (what they cost).
    `webhooks`: an endpoint (the webhook sink, in another process) wants every
    `notification.*` event, so the workers record and deliver one per reminder besides
    sending it. `history`: (rows, template) the database is copied from
    (`history.older_history`), or (0, None): an empty database. `ids`: the due reminders'
    ids, a kind of NEW_IDS (random: as the service made them before 20261206)."""
    measured = min(n, measured or n)
    older, template = history
    database_url = await fresh_database(DATABASE, template)
    redis_url = get_settings().redis_url
    await forget_loop_guard(redis_url)
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        # What this run writes, apart from the history (older rows, created before).
        since = await connection.scalar(text("SELECT now()"))
    started = time.perf_counter()
    await seed(engine, n, mix, ids)
    console.print(f"seeded {n:,} reminders in {time.perf_counter() - started:.1f}s")
    if not count_triggers:
        await set_count_triggers(engine, enabled=False)
    env = {
        "DISPATCH_CONCURRENCY": str(concurrency),
        "DISPATCH_BATCH_SIZE": str(batch),
        "DISPATCH_IDLE_SECONDS": "0.05",
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    sink = bench_webhooks.sink_process() if webhooks else contextlib.nullcontext(None)
    with sink as endpoint, fakes_and_env(database_url, redis_url, **env) as processes:
        if endpoint is not None:
            await bench_webhooks.subscribe_notification_events(engine, *endpoint)
        children = await start_workers(processes, workers)
        memories = [PeakMemory(child.pid) for child in children]
        for memory in memories:
            memory.__enter__()
        await checkpoint(engine)
        # The progress polls run on a connection of their own, whose backend is left out
        # of PostgreSQL's CPU: the bench's counting is not the service's work.
        async with engine.connect() as poller:
            cpu = CpuSeconds(
                [("workers" if c in children else "fakes", c.pid) for c in processes.children],
                database=DATABASE,
                server=await server_pid(database_url),
                left_out=[await poller.scalar(text("SELECT pg_backend_pid()"))],
            )
            await poller.commit()
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE notifications SET due_at = now() WHERE state = 'scheduled'")
                )
            wal_before = await wal_position(engine)
            cpu.start()
            t0 = time.perf_counter()
            while (left := await unsettled(poller)) > n - measured:
                # Rarely while most are left: the polls' reads still cost the server's cores.
                await asyncio.sleep(0.5 if left - (n - measured) > measured // 10 else 0.05)
                if time.perf_counter() - t0 > 3600:
                    raise RuntimeError(f"{left:,} of {n:,} still unsettled after an hour")
            seconds = time.perf_counter() - t0
            used = cpu.stop()
        wal_bytes = await wal_since(engine, wal_before)
        for memory in memories:
            memory.__exit__()
        async with engine.connect() as connection:
            states: dict[str, int] = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT state, count(*) FROM notifications"
                            " WHERE created_at >= :since GROUP BY state"
                        ),
                        {"since": since},
                    )
                ).all()
            )
            events = await connection.scalar(text("SELECT count(*) FROM webhook_events"))
            attempts: dict[str, int] = {
                f"{channel} {status}": count
                for channel, status, count in await connection.execute(
                    text(
                        "SELECT channel, status, count(*) FROM delivery_attempts"
                        " WHERE created_at >= :since"
                        " GROUP BY channel, status ORDER BY channel, status"
                    ),
                    {"since": since},
                )
            }
        processes.stop(children)
        baseline_cpu = CpuSeconds([("fakes", c.pid) for c in processes.children])
        baseline_cpu.start()
        baseline = await run_module(
            "app.bench.baseline",
            "--imo",
            processes.env["IMO_BASE_URL"],
            "--twilio",
            processes.env["TWILIO_BASE_URL"],
            "--whatsapp",
            processes.env["WHATSAPP_BASE_URL"],
            "--mix",
            mix,
            "--requests",
            str(measured),
            "--concurrency",
            str(concurrency * workers),
        )
        baseline_used = baseline_cpu.stop()
    await engine.dispose()
    rate = measured / seconds
    return {
        "mix": mix,
        "count triggers": "on" if count_triggers else "off",
        "webhooks": "notification.*" if webhooks else "none",
        "reminders": n,
        "measured": measured,
        "workers": workers,
        "history": older,
        "ids": ids,
        "seconds": seconds,
        "sent/s": rate,
        "baseline/s": baseline["rate"],
        "ratio": rate / baseline["rate"],
        "peak MB/worker": max(m.peak_mb for m in memories),
        # CPU per message: what a figure is limited by (2 cores are 2 s per second).
        "us/msg workers": per_message_us(used.get("workers", 0.0), measured),
        "us/msg pg": per_message_us(used.get("postgresql", 0.0), measured),
        # The bench's own progress polls (left out of the figure above).
        "us/msg pg polls": per_message_us(used.get("postgresql (bench)", 0.0), measured),
        "us/msg fakes": per_message_us(used.get("fakes", 0.0), measured),
        "us/msg bare loop": per_message_us(baseline["cpu_seconds"], measured),
        "us/msg fakes (bare)": per_message_us(baseline_used.get("fakes", 0.0), measured),
        # The whole server's WAL (the bench's own PostgreSQL: nothing else writes to it).
        "WAL B/msg": wal_bytes / measured,
        "sent": states.get("sent", 0),
        "other states": {k: v for k, v in states.items() if k != "sent"},
        "attempts": attempts,
        "webhook events": events,
    }


# What a comparison (`compare`) shows of each configuration: its medians.
FIGURES = ("sent/s", "ratio", "us/msg workers", "us/msg pg", "WAL B/msg")


def run(
    sizes: list[int],
    workers: list[int],
    concurrency: int,
    batch: int,
    json_path: Path | None,
    measured: int | None = None,
    mixes: list[str] | None = None,
    count_triggers: list[bool] | None = None,
    webhooks: list[bool] | None = None,
    histories: list[int] | None = None,
    reuse_history: bool = False,
    repeat: int = 1,
    ids: list[str] | None = None,
) -> Result:
    """One row per combination of the lists (history innermost: rows that differ only in
    it run back to back), `repeat` times over. With several workers or histories, a
    table of each configuration's medians next to the first workers' and the first
    history's (e.g. `us/msg pg` with 4 workers / with 1; on 10,000,000 older rows / on
    an empty table)."""
    kinds = ids or ["time-ordered"]
    for kind in kinds:
        if kind not in NEW_IDS:
            raise ValueError(f"unknown ids {kind!r}: one of {', '.join(NEW_IDS)}")
    for mix in mixes or ["imo-sms"]:
        if mix not in MIXES:
            raise ValueError(f"unknown mix {mix!r}: one of {', '.join(MIXES)}")
    histories = histories or [0]
    # Every history is in place before the first run: no seed between compared runs.
    templates = {
        older: asyncio.run(bench_history.older_history(older, reuse=reuse_history))[0]
        for older in dict.fromkeys(histories)
        if older
    }
    result = Result("dispatch: reminders sent end to end vs a bare aiohttp loop")
    for _ in range(repeat):
        for mix in mixes or ["imo-sms"]:
            for n in sizes:
                for count in workers:
                    for triggers in count_triggers or [True]:
                        for subscribed in webhooks or [False]:
                            for older, kind in itertools.product(histories, kinds):
                                row = asyncio.run(
                                    measure(
                                        n,
                                        count,
                                        concurrency,
                                        batch,
                                        measured,
                                        mix,
                                        triggers,
                                        subscribed,
                                        (older, templates.get(older)),
                                        kind,
                                    )
                                )
                                result.add(**row)
                                # Each row as it comes: a long comparison cut short keeps
                                # what it measured.
                                console.print(row)
    if templates:  # the last copy of a history: gigabytes (the template stays)
        asyncio.run(drop_database(DATABASE))
    result.show()
    keys = ("mix", "reminders", "workers", "count triggers", "webhooks", "history", "ids")
    comparisons = [
        compare(result.rows, keys=keys, vary=vary, figures=FIGURES)
        for vary in ("workers", "history", "ids")
        if len({row[vary] for row in result.rows}) > 1
    ]
    for comparison in comparisons:
        comparison.show()
    result.write_json(json_path, comparisons)
    return result
