"""Time-ordered ids (app/ids.py and SQL's `time_ordered_uuid()`): version 7, ordered by
the millisecond they were made in, random within it."""

from __future__ import annotations

import importlib.util
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ids import time_ordered_uuid

MIGRATION = Path(__file__).parents[2] / "migrations/versions/2026_12_06_0100_time_ordered_ids.py"


def made_at(value: uuid.UUID) -> datetime:
    return datetime.fromtimestamp(int.from_bytes(value.bytes[:6], "big") / 1000, UTC)


def written_out() -> str:
    """The migration's expression for servers without `uuidv7()` (before PostgreSQL 18)."""
    spec = importlib.util.spec_from_file_location("time_ordered_ids", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.WRITTEN_OUT).removeprefix("SELECT ")


def test_version_7_of_now() -> None:
    before = datetime.now(UTC)
    value = time_ordered_uuid()
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert abs((made_at(value) - before).total_seconds()) < 1


def test_ordered_across_milliseconds_random_within_one() -> None:
    earlier = time_ordered_uuid()
    time.sleep(0.002)
    later = time_ordered_uuid()
    assert earlier < later
    many = {time_ordered_uuid() for _ in range(10_000)}
    assert len(many) == 10_000


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("sql", ["time_ordered_uuid()", "written out"])
async def test_sql_makes_the_same_ids(db_connection: AsyncConnection, sql: str) -> None:
    expression = written_out() if sql == "written out" else sql
    statement = f"SELECT {expression}"
    now = await db_connection.scalar(text("SELECT clock_timestamp()"))
    first = await db_connection.scalar(text(statement))
    await db_connection.execute(text("SELECT pg_sleep(0.002)"))
    second = await db_connection.scalar(text(statement))
    assert isinstance(first, uuid.UUID) and isinstance(second, uuid.UUID)
    assert (first.version, first.variant) == (7, uuid.RFC_4122)
    assert abs((made_at(first) - now).total_seconds()) < 1
    assert first < second
    # Random within the millisecond: one per row of a set, all different.
    rows = await db_connection.scalar(
        text(f"SELECT count(DISTINCT {expression}) FROM generate_series(1, 1000)")
    )
    assert rows == 1000
