"""One engine and one sessionmaker per process, built at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# SQLSTATE classes worth a retry of the same unit of work: 08 connection exception;
# 57 operator intervention (admin or crash shutdown, "the database system is starting
# up", which asyncpg raises while connecting and SQLAlchemy does not call a disconnect);
# 40 transaction rollback (deadlock detected, serialization failure).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "57")


def transient_database_error(error: BaseException) -> bool:
    """PostgreSQL is unreachable, restarting or not yet accepting connections, or rolled
    the transaction back to break a deadlock: an idempotent unit of work is worth
    trying again shortly."""
    if isinstance(error, OSError | OperationalError | InterfaceError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
    return error.connection_invalidated or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def create_engine_and_sessionmaker(
    database_url: str, *, pool_size: int = 10
) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # Errors never quote parameters: they hold names and rendered reminders (S5).
        hide_parameters=True,
        # asyncpg prepares statements itself; keep its cache for the hot queries.
        connect_args={"server_settings": {"application_name": "clinic-notify"}},
    )
    return engine, async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def standalone_session(database_url: str) -> AsyncIterator[AsyncSession]:
    """A session on an engine of its own, disposed after: one unit of work in a command
    (`notify api-keys ...`, `notify dev`) that has no engine of the process's."""
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            yield session
    finally:
        await engine.dispose()


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A request's unit of work: commits when the endpoint returns, before the response.

    `scope="function"` below makes the teardown run before the response is sent, so a
    client that sees 2xx can rely on the write; an exception rolls everything back.
    """
    async with request.app.state.sessionmaker() as session:
        yield session
        await session.commit()


DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
