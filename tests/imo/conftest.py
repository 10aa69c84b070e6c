"""Fixtures of the invitation-round tests.

The runner works like a worker: several units of work at once (claims, the background
writer, the write-ahead), which one rolled-back test connection cannot host. So these
tests get a database of their own on the session's server (`imo_db`), emptied before
each test, and the fake Imo over a real socket (`fake_imo`, forgotten before each test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.channels.registry import imo_channel
from app.config import Settings
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import upgrade_head
from app.fakes.imo import FAKE_IMO_KEY, INVITE, FakeImoConfig, base_url, start_fake_imo
from app.imo.runner import InvitationRunner
from app.ratelimit import RateLimiter
from app.security import TokenSigner
from tests.factories import api_app
from tests.stack import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    TEST_SECRET_KEY,
    Services,
    recreate_database,
)

__all__ = ["api_app"]

IMO_TEST_DATABASE = "clinic_notify_imo_test"


@dataclass
class ImoDb:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    url: str


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def imo_db(services: Services) -> AsyncIterator[ImoDb]:
    url = await recreate_database(services.database_url, IMO_TEST_DATABASE)
    await asyncio.to_thread(upgrade_head, url, configure_logging=False)
    engine, sessionmaker = create_engine_and_sessionmaker(url)
    yield ImoDb(engine, sessionmaker, url)
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def db(imo_db: ImoDb) -> AsyncIterator[ImoDb]:
    """The invitation tests' database, without patients, authorisations or rounds."""
    async with imo_db.engine.begin() as connection:
        await connection.execute(
            text("TRUNCATE patients, imo_authorizations, imo_invitation_rounds, switches CASCADE")
        )
    yield imo_db


@dataclass
class FakeImo:
    url: str
    app: web.Application

    def requests_per_phone(self) -> dict[str, int]:
        """`send_invite` requests the fake received, by phone."""
        return dict(self.app[FAKE_IMO_KEY].phones[INVITE])

    def configure(self, **changes: Any) -> None:
        self.app[FAKE_IMO_KEY].reconfigure(changes)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fake_imo_server() -> AsyncIterator[FakeImo]:
    runner, port = await start_fake_imo(FakeImoConfig(callbacks_enabled=False))
    yield FakeImo(base_url(port), runner.app)
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def fake_imo(fake_imo_server: FakeImo) -> FakeImo:
    fake = fake_imo_server.app[FAKE_IMO_KEY]
    fake.reconfigure({"error_rate": 0.0, "garbage_rate": 0.0, "timeout_rate": 0.0})
    fake.reset()
    return fake_imo_server


def round_settings(db: ImoDb, fake: FakeImo, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": db.url,
        "secret_key": TEST_SECRET_KEY,
        "public_base_url": "http://127.0.0.1:9",
        "imo_base_url": fake.url,
        "imo_username": FAKE_IMO_USERNAME,
        "imo_password": FAKE_IMO_PASSWORD,
        "imo_rate_limit_per_second": 100_000,
        "imo_timeout_seconds": 2,
        # Several batches per round, and dead workers' batches taken over quickly.
        "imo_invitation_batch_size": 7,
        "imo_invitation_concurrency": 20,
        "imo_invitation_lease_seconds": 1,
        "imo_invitation_poll_seconds": 0.1,
        "messaging_window_start": "08:00",
        "messaging_window_end": "20:00",
    }
    values.update(overrides)
    return Settings(**values)


RunnerFactory = Callable[..., InvitationRunner]


@pytest_asyncio.fixture(loop_scope="session")
async def make_runner(db: ImoDb, fake_imo: FakeImo, redis: Redis) -> AsyncIterator[RunnerFactory]:
    """Build runners on the test database and the fake Imo: `make_runner(settings,
    clock=...)`; their HTTP sessions are closed after the test."""
    sessions: list[aiohttp.ClientSession] = []
    key = f"ratelimit:imo:test:{uuid.uuid4().hex}"

    def build(
        settings: Settings, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> InvitationRunner:
        http = aiohttp.ClientSession()
        sessions.append(http)
        imo = imo_channel(settings, http)
        assert imo is not None
        return InvitationRunner(
            settings=settings,
            sessionmaker=db.sessionmaker,
            imo=imo,
            limiter=RateLimiter(redis, key, settings.imo_rate_limit_per_second),
            signer=TokenSigner(TEST_SECRET_KEY),
            clock=clock,
            retry_delays=(0.05,),
            flush_interval=0.05,
        )

    yield build
    for http in sessions:
        await http.close()
