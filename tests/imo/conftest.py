"""Fixtures of the invitation-round tests.

The runner works like a worker: several units of work at once (claims, the background
writer, the write-ahead), which one rolled-back test connection cannot host. So these
tests use `db` (a database of their own, emptied before each test) and the fake Imo
over a real socket (`fake_imo`, forgotten before each test), both from tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest_asyncio
from redis.asyncio import Redis

from app.channels.registry import imo_channel
from app.config import Settings
from app.imo.runner import InvitationRunner
from app.ratelimit import RateLimiter
from app.security import TokenSigner
from tests.fake_servers import FakeImo
from tests.stack import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    TEST_SECRET_KEY,
    Database,
)


def round_settings(db: Database, fake: FakeImo, **overrides: Any) -> Settings:
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
async def make_runner(
    db: Database, fake_imo: FakeImo, redis: Redis
) -> AsyncIterator[RunnerFactory]:
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
            pacing_error_backoff=0.05,
            outage_backoff=0.05,
        )

    yield build
    for http in sessions:
        await http.close()
