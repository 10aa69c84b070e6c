"""Shared fixtures: the session's PostgreSQL and Redis, transactional sessions, the stack.

- `services`: `TEST_DATABASE_URL` / `TEST_REDIS_URL` when set (used as they are),
  else an embedded PostgreSQL (database `clinic_notify_test`) and Redis in a fresh
  temporary folder, stopped and removed at the end. Migrations run once, here.
- `engine` (session), `db_connection` / `db_session` / `db_sessionmaker` (per test, in
  one transaction rolled back at the end: the code under test may commit freely).
- `redis` (per test, flushed at the end).
- `api_app` (session: the app, lifespan running) and `api` (per test: an authorised
  client of it on the test's rolled-back transaction). A module that needs the app
  configured otherwise overrides `api_app` (see `running_app`); `api` follows.
- `db` (per test): a database of its own on the same server, emptied before the test,
  for code that commits from several connections at once (worker loops, invitation
  runners), which the one rolled-back connection of `db_session` cannot host.
- `fake_imo`, `fake_twilio` (per test, reset): the fake providers served from this
  process with callbacks off (tests/fake_servers.py); `http`: an aiohttp client.
- `stack` (session): the real API, a worker and the fake providers as processes; see
  tests/stack.py. Tests that need their own stack use `run_stack(services, ...)` and
  override `stack`. `stack_api`: an authorised client of whichever `stack` applies.

A developer's `.env` never leaks into tests: settings read the environment only.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app import embedded
from app.config import Settings, get_settings
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import upgrade_head
from app.fakes.imo import FakeImoConfig, base_url, start_fake_imo
from app.fakes.twilio import FakeTwilioConfig, start_fake_twilio
from tests.factories import api_client, running_app
from tests.fake_servers import FakeImo, FakeTwilio
from tests.stack import (
    ACTIVE_STACKS,
    TEST_SECRET_KEY,
    Database,
    Services,
    Stack,
    migrated_database,
    run_stack,
)

# Before any test module is imported, so that whatever reads settings sees these.
Settings.model_config["env_file"] = None
os.environ.update(
    APP_ENV="test",
    SECRET_KEY=TEST_SECRET_KEY,
    # The unit tests' providers are the fakes (tests that check ALLOWED_RECIPIENTS turn
    # it off).
    FAKE_PROVIDERS="true",
    # Port 9 (discard): callback URLs built in unit tests lead nowhere.
    PUBLIC_BASE_URL="http://127.0.0.1:9",
)
get_settings.cache_clear()

TEST_DATABASE = "clinic_notify_test"
COMMITTING_TEST_DATABASE = "clinic_notify_committing_test"

# The shared stack: fast callbacks so that end-to-end tests need not wait long.
SHARED_STACK_FAKE_OPTIONS = {"callback_delay": 0.2}


@pytest.fixture(scope="session", autouse=True)
def services() -> Iterator[Services]:
    """Autouse: DATABASE_URL and REDIS_URL are in the environment (and settings) before
    any other fixture builds an app or a worker from `get_settings()`."""
    data_dir = Path(tempfile.mkdtemp(prefix="clinic-notify-test-"))
    try:
        database_url = os.environ.get("TEST_DATABASE_URL") or embedded.ensure_postgres(
            data_dir, TEST_DATABASE, durable=False, fresh=True
        )
        redis_url = os.environ.get("TEST_REDIS_URL") or embedded.ensure_redis(data_dir)
        # DATA_DIR: no test meets the checkout's own .data (or a `notify dev` running on it).
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, DATA_DIR=str(data_dir))
        get_settings.cache_clear()
        # In a thread: alembic's env.py runs (and then unsets) an event loop of its own.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(upgrade_head, database_url, configure_logging=False).result()
        yield Services(database_url=database_url, redis_url=redis_url, data_dir=data_dir)
    finally:
        embedded.stop_all(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def engine(services: Services) -> AsyncIterator[AsyncEngine]:
    engine, _ = create_engine_and_sessionmaker(services.database_url)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def db_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                await transaction.rollback()


@pytest_asyncio.fixture(loop_scope="session")
async def db_sessionmaker(db_connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Sessions on the test's connection: their commits are savepoints, undone at the end.
    Hand it to code that opens its own units of work (worker tasks, services)."""
    return async_sessionmaker(
        bind=db_connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest_asyncio.fixture(loop_scope="session")
async def db_session(
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with db_sessionmaker() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def redis(services: Services) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis_url)
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def committing_database(services: Services) -> AsyncIterator[Database]:
    async with migrated_database(services, COMMITTING_TEST_DATABASE) as database:
        yield database


@pytest_asyncio.fixture(loop_scope="session")
async def db(committing_database: Database) -> Database:
    """A database of its own, without patients (nor anything of theirs), rounds or keys."""
    await committing_database.empty()
    return committing_database


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fake_imo_server() -> AsyncIterator[FakeImo]:
    runner, port = await start_fake_imo(FakeImoConfig(callbacks_enabled=False))
    yield FakeImo(base_url(port), runner.app)
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def fake_imo(fake_imo_server: FakeImo) -> FakeImo:
    fake_imo_server.reset()
    return fake_imo_server


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fake_twilio_server() -> AsyncIterator[FakeTwilio]:
    runner, port = await start_fake_twilio(FakeTwilioConfig(callbacks_enabled=False))
    yield FakeTwilio(f"http://127.0.0.1:{port}", runner.app)
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def fake_twilio(fake_twilio_server: FakeTwilio) -> FakeTwilio:
    fake_twilio_server.reset()
    return fake_twilio_server


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def api_app() -> AsyncIterator[FastAPI]:
    """The whole app with the session's settings, its lifespan running."""
    async with running_app(Settings()) as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    api_app: FastAPI, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    """An authorised client of `api_app`, sharing the test's rolled-back transaction:
    what it writes, `db_session` sees, and what `db_session` flushes, it sees."""
    async with api_client(api_app, db_sessionmaker) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def stack(services: Services) -> AsyncIterator[Stack]:
    """One real stack shared by the session's end-to-end tests; reset the fakes or count
    deltas rather than assume a clean slate."""
    async with run_stack(
        services,
        fake_imo_options=SHARED_STACK_FAKE_OPTIONS,
        fake_twilio_options=SHARED_STACK_FAKE_OPTIONS,
        fake_whatsapp_options=SHARED_STACK_FAKE_OPTIONS,
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def stack_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the stack's API over a socket, authorised with a fresh key."""
    key = await stack.create_api_key()
    async with stack.client(key) as client:
        yield client


# ---------------------------------------------------------------------------- failure logs

_LOG_OFFSETS = pytest.StashKey[dict[int, dict[str, int]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach what the stack's processes wrote during a failed test to its report."""
    report = yield
    if report.when == "setup":
        item.stash[_LOG_OFFSETS] = {id(s): s.log_offsets() for s in ACTIVE_STACKS}
    if report.failed and ACTIVE_STACKS:
        offsets = item.stash.get(_LOG_OFFSETS, {})
        for number, running in enumerate(ACTIVE_STACKS):
            report.sections.append(
                (
                    f"stack {number} processes ({report.when})",
                    running.logs(offsets.get(id(running))),
                )
            )
    return report
