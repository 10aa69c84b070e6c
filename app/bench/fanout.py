"""`notify bench fanout`: where one fan-out chunk's time goes, cost by cost.

N patients are seeded and a first broadcast to all of them is fanned out in process
(committed: the table the second one meets holds N notifications, and its rate is the
fan-out alone, without the API, the worker or progress polls). Then the chunks of a
second broadcast are timed under variants, each inside a transaction that is rolled
back: the statement as it is, and the statement with one cost taken away (a trigger
disabled, the foreign key or an index dropped: DDL is transactional in PostgreSQL) or put
back (`VARIANTS`). Each round times every variant once, in a rotated order, at the same
cursor; the table is vacuumed between rounds. The figures are medians of the rounds, and
each variant's difference from the statement as it is, measured in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.bench.broadcast import seed
from app.bench.common import Result, database_url_of, fresh_database
from app.broadcasts import service as broadcast_service
from app.broadcasts.repository import NEW_IDS, ChunkStatement
from app.config import Settings, get_settings
from app.models import Broadcast

DATABASE = "clinic_notify_bench_fanout"


@dataclass(frozen=True)
class Variant:
    name: str
    # Run (untimed) in the chunk's transaction before the statement; rolled back after.
    setup: list[str] = field(default_factory=list)
    # The chunk statement's notification ids (app.broadcasts.repository.NEW_IDS).
    ids: str = "time-ordered"
    # The member's country written by the statement (else looked up by the trigger).
    country: bool = True


def _drop(index: str, constraint: str | None) -> str:
    if constraint is not None:
        return f"ALTER TABLE notifications DROP CONSTRAINT {constraint}"
    return f"DROP INDEX {index}"


def variants(indexes: list[tuple[str, str | None]]) -> list[Variant]:
    """The statement as it is, then without each cost that a chunk pays per row."""
    found = [
        Variant("as is"),
        Variant(
            "without the country trigger",
            ["ALTER TABLE notifications DISABLE TRIGGER notification_country"],
        ),
        Variant("country looked up per row by the trigger", country=False),
        Variant("random ids (uuid v4)", ids="random"),
        Variant(
            "without the dashboard count trigger",
            ["ALTER TABLE notifications DISABLE TRIGGER notification_counts_insert"],
        ),
        Variant(
            "without the patient foreign key",
            ["ALTER TABLE notifications DROP CONSTRAINT fk_notifications_patient_id_patients"],
        ),
    ]
    for index, constraint in indexes:
        if index == "uq_notifications_broadcast_patient":
            continue  # the fan-out's ON CONFLICT needs it
        found.append(Variant(f"without {index}", [_drop(index, constraint)]))
    found.append(
        Variant(
            "without every secondary index, trigger and the foreign key",
            [
                "ALTER TABLE notifications DISABLE TRIGGER USER",
                "ALTER TABLE notifications DROP CONSTRAINT fk_notifications_patient_id_patients",
                *(
                    _drop(index, constraint)
                    for index, constraint in indexes
                    if index != "uq_notifications_broadcast_patient"
                ),
            ],
        )
    )
    return found


def _cpu_ns(pid: int) -> int:
    """CPU time of a (local) process so far, in nanoseconds (Linux schedstat): what the
    PostgreSQL backend spends on the statement, whatever else the 2 cores are doing."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


# The secondary indexes of notifications, and the constraint each backs (if one does).
INDEXES = """
SELECT c.relname, k.conname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
WHERE i.indrelid = 'notifications'::regclass AND NOT i.indisprimary ORDER BY 1
"""


async def _broadcast(session: AsyncSession) -> uuid.UUID:
    broadcast = Broadcast(
        id=uuid.uuid4(),
        group_name="camp",
        filter={"tags": ["camp"]},
        template="camp.invite",
        parameters={"day": "Friday", "area": "@area"},
        purpose="health_camp",
        send_at=datetime(2099, 1, 1, 6, tzinfo=UTC),
        channel_chain=None,
        state="fanning_out",
    )
    session.add(broadcast)
    await session.commit()
    return broadcast.id


async def _prepare(database_url: str, patients: int, settings: Settings) -> float:
    """Seed N patients and fan a first broadcast to them out; its rate per second."""
    engine = create_async_engine(database_url)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    await seed(database_url, patients)
    async with sessionmaker() as session:
        first = await _broadcast(session)
    started = time.perf_counter()
    done = await broadcast_service.fan_out(sessionmaker, first, settings)
    rate = done.members / (time.perf_counter() - started)
    async with engine.connect() as connection:
        await connection.execute(text("COMMIT"))
        await connection.execute(text("VACUUM ANALYZE notifications"))
    await engine.dispose()
    return rate


async def _reusable(database_url: str, patients: int) -> bool:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            found = await connection.scalar(
                text(
                    "SELECT (SELECT count(*) FROM patients) = :n "
                    "AND (SELECT count(*) FROM notifications) = :n"
                ),
                {"n": patients},
            )
            return bool(found)
    except Exception:  # no such database: not reusable
        return False
    finally:
        await engine.dispose()


async def measure(patients: int, chunk: int, rounds: int, reuse: bool) -> list[dict[str, Any]]:
    settings = get_settings().model_copy(update={"broadcast_chunk_size": chunk})
    url = database_url_of(DATABASE)
    in_process = None
    if not (reuse and await _reusable(url, patients)):
        url = await fresh_database(DATABASE)
        in_process = await _prepare(url, patients, settings)
    engine = create_async_engine(url)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.connect() as connection:
        indexes = [(row[0], row[1]) for row in await connection.execute(text(INDEXES))]
    async with sessionmaker() as session:
        second = await session.get_one(Broadcast, await _broadcast(session))
        plan = await broadcast_service.plan(session, second, settings)
        statements = {
            (ids, country): ChunkStatement(plan, ids, country)
            for ids in NEW_IDS
            for country in (True, False)
        }
    found = variants(indexes)
    took: dict[str, list[float]] = {v.name: [] for v in found}
    used: dict[str, list[float]] = {v.name: [] for v in found}
    step = max(1, (patients - chunk) // max(1, rounds))
    async with engine.connect() as connection:
        cursors = [
            await connection.scalar(
                text("SELECT id FROM patients ORDER BY id OFFSET :n LIMIT 1"), {"n": r * step}
            )
            for r in range(rounds)
        ]
    for round_, cursor in enumerate(cursors):
        order = found[round_ % len(found) :] + found[: round_ % len(found)]
        for variant in order:
            async with sessionmaker() as session:
                backend = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
                for sql in variant.setup:
                    await session.execute(text(sql))
                statement = statements[variant.ids, variant.country]
                cpu_before = _cpu_ns(backend)
                began = time.perf_counter()
                _, members, made = await statement.run(session, cursor, chunk)
                took[variant.name].append((time.perf_counter() - began) * 1000)
                used[variant.name].append((_cpu_ns(backend) - cpu_before) / 1e6)
                await session.rollback()
            if members != chunk or made != chunk:
                raise RuntimeError(f"{variant.name}: {members} members, {made} made")
        async with engine.connect() as connection:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("VACUUM notifications"))
    await engine.dispose()
    as_is = statistics.median(used["as is"])
    rows = []
    for variant in found:
        cpu = statistics.median(used[variant.name])
        rows.append(
            {
                "variant": variant.name,
                "backend CPU ms p50": cpu,
                "CPU min": min(used[variant.name]),
                "CPU max": max(used[variant.name]),
                "saves CPU ms": as_is - cpu,
                "share": (as_is - cpu) / as_is,
                "wall ms p50": statistics.median(took[variant.name]),
                "rows per CPU s": chunk / cpu * 1000,
            }
        )
    if in_process is None:
        return rows
    rows.append(
        {
            "variant": f"whole fan-out in process ({patients:,}, committed per chunk)",
            "backend CPU ms p50": 0.0,
            "CPU min": 0.0,
            "CPU max": 0.0,
            "saves CPU ms": 0.0,
            "share": 0.0,
            "wall ms p50": chunk / in_process * 1000,
            "rows per CPU s": in_process,
        }
    )
    return rows


def run(patients: int, chunk: int, rounds: int, reuse: bool, json_path: Path | None) -> Result:
    result = Result(f"fan-out: one chunk of {chunk:,} under each variant, median of {rounds}")
    for row in asyncio.run(measure(patients, chunk, rounds, reuse)):
        result.add(**row)
    result.show()
    result.write_json(json_path)
    return result
