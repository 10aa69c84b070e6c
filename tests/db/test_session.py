"""Which database errors mean "try the same work again shortly"."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import create_engine_and_sessionmaker, transient_database_error
from tests.stack import Services
from tests.waiting import wait_until


class ServerError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def dbapi_error(sqlstate: str, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, ServerError(sqlstate), connection_invalidated=invalidated)


class TestDatabaseUnavailable:
    @pytest.mark.parametrize(
        "error",
        [
            ConnectionRefusedError(),
            InterfaceError("SELECT 1", {}, Exception("connection is closed")),
            dbapi_error("57P03"),  # the database system is starting up
            dbapi_error("57P01"),  # terminating connection due to administrator command
            dbapi_error("08006"),  # connection failure
            dbapi_error("40P01"),  # deadlock detected
            dbapi_error("XX000", invalidated=True),
        ],
    )
    def test_a_server_away_or_restarting_or_a_deadlock(self, error: BaseException) -> None:
        assert transient_database_error(error)

    @pytest.mark.parametrize(
        "error",
        [
            dbapi_error("23505"),
            IntegrityError("INSERT", {}, ServerError("23505")),
            dbapi_error("42P01"),
            ValueError("not a database error"),
        ],
    )
    def test_a_mistake_is_not_retried(self, error: BaseException) -> None:
        assert not transient_database_error(error)


class TestPooledConnections:
    """No pre-ping: a connection the server closed is swapped at checkout for nothing,
    and a checkout asks the server nothing before the unit of work's own statements."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def pool(self, services: Services) -> AsyncIterator[AsyncEngine]:
        engine, _ = create_engine_and_sessionmaker(services.database_url, pool_size=1)
        try:
            yield engine
        finally:
            await engine.dispose()

    @pytest.mark.asyncio(loop_scope="session")
    async def test_a_connection_the_server_closed_is_replaced_at_checkout(
        self, pool: AsyncEngine, engine: AsyncEngine
    ) -> None:
        async with pool.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as admin:
            assert await admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await admin.commit()
        # The server's goodbye reaches the idle pooled socket as the loop runs.
        await wait_until(raw.is_closed, timeout=5)

        async with pool.connect() as connection:
            assert await connection.scalar(text("SELECT pg_backend_pid()")) != pid

    @pytest.mark.asyncio(loop_scope="session")
    async def test_a_checkout_sends_nothing_before_the_work(self, pool: AsyncEngine) -> None:
        async with pool.connect() as connection:  # the pool's one connection, opened
            raw = (await connection.get_raw_connection()).driver_connection
            await connection.scalar(text("SELECT 1"))
        sent: list[str] = []
        raw.add_query_logger(lambda record: sent.append(record.query))
        async with pool.begin() as connection:
            await connection.scalar(text("SELECT 2"))
        # asyncpg logs its simple queries: the unit of work's BEGIN and COMMIT, and no
        # pre-ping's BEGIN ... ROLLBACK around a `;` before them.
        assert sent == ["BEGIN;", "COMMIT;"]
