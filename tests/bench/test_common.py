"""What the benchmarks share: the comparison table of their runs."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bench.common import CpuSeconds, compare


def test_compare_shows_each_configurations_medians_next_to_the_first_value() -> None:
    rows = [
        {"workers": w, "history": h, "mix": "sms", "us/msg pg": pg}
        for w, h, pg in [
            (1, 0, 100.0),
            (1, 10, 104.0),
            (1, 0, 120.0),
            (1, 10, 132.0),
            (1, 0, 110.0),
            (1, 10, 121.0),
            (4, 0, 50.0),
        ]
    ]
    by_history = compare(
        rows, keys=("mix", "workers", "history"), vary="history", figures=["us/msg pg"]
    )
    assert by_history.rows == [
        # `mix` is the same in every row: left out.
        {"workers": 1, "history": 0, "runs": 3, "us/msg pg": 110.0, "us/msg pg vs 0": 1.0},
        {"workers": 1, "history": 10, "runs": 3, "us/msg pg": 121.0, "us/msg pg vs 0": 1.1},
        {"workers": 4, "history": 0, "runs": 1, "us/msg pg": 50.0, "us/msg pg vs 0": 1.0},
    ]
    by_workers = compare(
        rows, keys=("mix", "workers", "history"), vary="workers", figures=["us/msg pg"]
    )
    assert [r["us/msg pg vs 1"] for r in by_workers.rows] == [1.0, 1.0, 0.455]


@pytest.mark.asyncio(loop_scope="session")
async def test_the_benchs_own_backend_is_counted_apart_from_the_services(
    db_connection: AsyncConnection,
) -> None:
    """`notify bench dispatch` polls its progress on a connection of its own: that
    backend's CPU is the bench's, not the service's ("us/msg pg")."""
    backend = await db_connection.scalar(text("SELECT pg_backend_pid()"))
    database = await db_connection.scalar(text("SELECT current_database()"))
    burn = text("SELECT count(*) FROM generate_series(1, 3000000)")

    apart = CpuSeconds([], database=database, left_out=[backend])
    apart.start()
    await db_connection.scalar(burn)
    assert apart.stop().get("postgresql (bench)", 0.0) >= 0.05

    counted = CpuSeconds([], database=database)
    counted.start()
    await db_connection.scalar(burn)
    used = counted.stop()
    assert "postgresql (bench)" not in used and used["postgresql"] >= 0.05
