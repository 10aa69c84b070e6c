"""Fixtures of the worker tests: arq's tasks, crons and start-up/shutdown hooks, run in
this process the way arq runs them, on `db` (worker loops commit from several
connections at once) and the fakes over real sockets (`fake_imo`, `fake_twilio`).

- `worker_settings`: what `get_settings()` answers during the test: `db`, the fakes, and
  short polls (arq's hooks read `get_settings()` themselves).
- `context(**settings)`: a job context as arq's start-up leaves it, for tasks and crons.
- `Queue`: arq's `ctx["redis"]` as far as crons use it, keeping the jobs they queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.config import Settings, get_settings
from tests.fake_servers import FakeImo, FakeTwilio
from tests.stack import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_TWILIO_SMS_FROM,
    Database,
)

Context = dict[str, Any]
ContextFactory = Callable[..., Context]


class Queue:
    """arq's `ctx["redis"]` as far as a cron uses it: the jobs it was asked to queue."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, tuple[Any, ...], str | None]] = []

    async def enqueue_job(self, name: str, *args: Any, _job_id: str | None = None) -> None:
        self.jobs.append((name, args, _job_id))


def environment(db: Database, imo: FakeImo, twilio: FakeTwilio) -> dict[str, str]:
    """The settings a worker of these tests runs with."""
    return {
        "DATABASE_URL": db.url,
        "IMO_BASE_URL": imo.url,
        "IMO_USERNAME": FAKE_IMO_USERNAME,
        "IMO_PASSWORD": FAKE_IMO_PASSWORD,
        "TWILIO_BASE_URL": twilio.url,
        "TWILIO_ACCOUNT_SID": FAKE_TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": FAKE_TWILIO_AUTH_TOKEN,
        "TWILIO_SMS_FROM": FAKE_TWILIO_SMS_FROM,
        "DISPATCH_IDLE_SECONDS": "0.05",
        "IMO_INVITATION_POLL_SECONDS": "0.1",
    }


@pytest.fixture
def worker_settings(
    db: Database, fake_imo: FakeImo, fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    for name, value in environment(db, fake_imo, fake_twilio).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def context(
    db: Database, fake_imo: FakeImo, fake_twilio: FakeTwilio, redis: Redis
) -> ContextFactory:
    """`context(**overrides)`: what a task or cron finds in arq's context: settings (`db`
    and the fakes, with `overrides`), units of work, the limiters' Redis. No loop runs."""

    def build(**overrides: Any) -> Context:
        values: dict[str, Any] = {
            name.lower(): value for name, value in environment(db, fake_imo, fake_twilio).items()
        }
        values.update(overrides)
        return {
            "settings": Settings(**values),
            "sessionmaker": db.sessionmaker,
            "limiter_redis": redis,
        }

    return build
