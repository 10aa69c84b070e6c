"""The older history other benchmarks measure on (`notify bench dispatch --history N`,
`notify bench callbacks --history N`): seeded once into a template, reused, copied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.bench import history
from app.bench.common import fresh_database
from app.devtools.environment import prepare_environment

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

N = 2_000


async def drop_template(n: int) -> None:
    admin_url, _ = prepare_environment()
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = history.OLDER.format(n=n)
    async with admin.connect() as connection:
        if await connection.scalar(
            text("SELECT count(*) FROM pg_database WHERE datname = :name"), {"name": name}
        ):
            await connection.execute(text(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false'))
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def no_template() -> AsyncIterator[None]:
    await drop_template(N)
    yield
    await drop_template(N)


async def test_seeded_once_then_reused_and_copied_whole(no_template: None) -> None:
    name, took = await history.older_history(N, reuse=True)
    assert took  # nothing to reuse yet: seeded
    assert (await history.older_history(N, reuse=True)) == (name, {})
    url = await fresh_database("clinic_notify_bench_history_copy", template=name)
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT state, count(*) FROM notifications GROUP BY state")
        )
        states: dict[str, int] = {state: count for state, count in rows}
        # Final states only: nothing for a worker to send, nothing to reconcile.
        assert sum(states.values()) == N and "scheduled" not in states
        assert set(states) <= {"sent", "delivered", "read", "failed", "expired", "denied"}
        to_reconcile = await connection.scalar(
            text(
                "SELECT count(*) FROM delivery_attempts"
                " WHERE status = 'sent' AND reconcile_checks < 5"
            )
        )
        assert to_reconcile == 0
    await engine.dispose()
    # Without --reuse-history: seeded again.
    assert (await history.older_history(N, reuse=False))[1]
