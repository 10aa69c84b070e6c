"""Fixtures of the worker tests: arq's tasks, crons and start-up/shutdown hooks, run in
this process the way arq runs them, on a database of their own (worker loops commit from
several connections at once) and the fake providers over real sockets.

- `db`: the workers' database, emptied before each test.
- `fakes`: the fake Imo and Twilio (callbacks off), reset before each test.
- `worker_settings`: what `get_settings()` answers during the test: the workers'
  database, the fakes, and short polls (arq's hooks read `get_settings()` themselves).
- `context(**settings)`: a job context as arq's start-up leaves it, for tasks and crons.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from redis.asyncio import Redis

from app.config import Settings, get_settings
from app.fakes.imo import FAKE_IMO_KEY, INVITE, FakeImoConfig, base_url, start_fake_imo
from app.fakes.twilio import FAKE_TWILIO, FakeTwilioConfig, start_fake_twilio
from tests.stack import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_TWILIO_SMS_FROM,
    Database,
    Services,
    migrated_database,
)

WORKERS_TEST_DATABASE = "clinic_notify_workers_test"


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def workers_db(services: Services) -> AsyncIterator[Database]:
    async with migrated_database(services, WORKERS_TEST_DATABASE) as database:
        yield database


@pytest_asyncio.fixture(loop_scope="session")
async def db(workers_db: Database) -> Database:
    await workers_db.empty()
    return workers_db


@dataclass
class Fakes:
    imo_url: str
    twilio_url: str
    imo: web.Application
    twilio: web.Application

    def invites(self) -> dict[str, int]:
        """`send_invite` requests the fake Imo received, by phone."""
        return dict(self.imo[FAKE_IMO_KEY].phones[INVITE])

    def sms(self) -> dict[str, int]:
        """Messages the fake Twilio accepted, by phone."""
        return dict(self.twilio[FAKE_TWILIO].to_counts)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fake_servers() -> AsyncIterator[Fakes]:
    imo, imo_port = await start_fake_imo(
        FakeImoConfig(
            username=FAKE_IMO_USERNAME, password=FAKE_IMO_PASSWORD, callbacks_enabled=False
        )
    )
    twilio, twilio_port = await start_fake_twilio(FakeTwilioConfig(callbacks_enabled=False))
    try:
        yield Fakes(base_url(imo_port), f"http://127.0.0.1:{twilio_port}", imo.app, twilio.app)
    finally:
        await imo.cleanup()
        await twilio.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def fakes(fake_servers: Fakes) -> Fakes:
    fake_servers.imo[FAKE_IMO_KEY].reset()
    fake_servers.twilio[FAKE_TWILIO].to_counts.clear()
    return fake_servers


def settings_values(db: Database, fakes: Fakes) -> dict[str, str]:
    """The environment a worker of these tests runs with."""
    return {
        "DATABASE_URL": db.url,
        "IMO_BASE_URL": fakes.imo_url,
        "IMO_USERNAME": FAKE_IMO_USERNAME,
        "IMO_PASSWORD": FAKE_IMO_PASSWORD,
        "TWILIO_BASE_URL": fakes.twilio_url,
        "TWILIO_ACCOUNT_SID": FAKE_TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": FAKE_TWILIO_AUTH_TOKEN,
        "TWILIO_SMS_FROM": FAKE_TWILIO_SMS_FROM,
        "DISPATCH_IDLE_SECONDS": "0.05",
        "IMO_INVITATION_POLL_SECONDS": "0.1",
    }


@pytest.fixture
def worker_settings(db: Database, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in settings_values(db, fakes).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


Context = dict[str, Any]
ContextFactory = Callable[..., Context]


@pytest.fixture
def context(db: Database, fakes: Fakes, redis: Redis) -> ContextFactory:
    """`context(**overrides)`: what a task or cron finds in arq's context: settings (the
    workers' database and the fakes, with `overrides`), units of work, the limiters'
    Redis. No loop runs."""

    def build(**overrides: Any) -> Context:
        values: dict[str, Any] = {k.lower(): v for k, v in settings_values(db, fakes).items()}
        values.update(overrides)
        return {
            "settings": Settings(**values),
            "sessionmaker": db.sessionmaker,
            "limiter_redis": redis,
        }

    return build
