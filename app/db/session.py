"""One engine and one sessionmaker per process, built at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.config import get_settings

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


def unique_violation(error: BaseException) -> bool:
    """A unique constraint refused the row (SQLSTATE 23505): another request made it
    between our check and our insert."""
    return isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) == "23505"


def create_engine_and_sessionmaker(
    database_url: str, *, pool_size: int = 10, statement_cache: bool | None = None
) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """The process's engine. `statement_cache` (default: DATABASE_STATEMENT_CACHE) off
    makes every statement an unnamed one, prepared and run inside its transaction: what
    PgBouncer in transaction mode before 1.21 needs (a named statement prepared on one
    server connection is unknown to the next transaction's)."""
    if statement_cache is None:
        statement_cache = get_settings().database_statement_cache
    connect_args: dict[str, Any] = {
        "server_settings": {"application_name": "clinic-notify"},
    }
    if not statement_cache:
        connect_args |= {
            # asyncpg's own cache (its introspection queries) and SQLAlchemy's.
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            # "" is PostgreSQL's unnamed statement: replaced by the next one, never
            # left behind on a server connection another client gets next.
            "prepared_statement_name_func": str,
        }
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it cost three round trips (BEGIN, `;`, ROLLBACK) per checkout, a
        # third of scheduling one notification. A connection the server closed (restart,
        # admin shutdown, idle timeout) is known closed to asyncpg without asking:
        # _refuse_closed_connections swaps it for a fresh one at checkout. A connection
        # that dies in use raises a disconnect, SQLAlchemy invalidates the pool, and the
        # unit of work is retried where it is idempotent (transient_database_error).
        pool_pre_ping=False,
        # Errors never quote parameters: they hold names and rendered reminders (S5).
        hide_parameters=True,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "checkout", _refuse_closed_connections)
    return engine, async_sessionmaker(engine, expire_on_commit=False)


def _refuse_closed_connections(
    _dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """A pooled connection whose socket the server closed is refused at checkout: the
    pool discards it and checks out (or opens) another, up to three times. It costs no
    round trip: asyncpg marks a connection closed when its socket reports end-of-file."""
    is_closed = getattr(record.driver_connection, "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("the server closed this pooled connection")


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
