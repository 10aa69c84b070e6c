"""Redis flushed, Redis restarted and PostgreSQL restarted in the middle of dispatch.

PostgreSQL is the source of truth and Redis holds only rate-limit tokens and arq's
bookkeeping: losing either for a while delays reminders, loses none and sends none twice,
and the workers and the API carry on by themselves once it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from app import embedded
from tests.reliability.helpers import (
    Seeded,
    attempts,
    received,
    seed,
    state_counts,
    wait_until_settled,
)
from tests.stack import Child, Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

COUNT = 1200
ENV = {
    "SENDING_STALE_AFTER_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "2",
    "DISPATCH_IDLE_SECONDS": "0.2",
    "DISPATCH_BATCH_SIZE": "100",
    "RETRY_BASE_SECONDS": "1",
    "RETRY_MAX_SECONDS": "4",
    "IMO_RATE_LIMIT_PER_SECOND": "150",
    "TWILIO_RATE_LIMIT_PER_SECOND": "150",
}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(own_services: Services) -> AsyncIterator[Stack]:
    async with run_stack(
        own_services,
        workers=2,
        env=ENV,
        fake_imo_options={"callback_delay": 0.3},
        fake_twilio_options={"callback_delay": 0.3},
    ) as running:
        yield running


async def survive(
    stack: Stack, series: int, fault: Callable[[], Awaitable[None]]
) -> tuple[Counter[str], Counter[str]]:
    """Seed, wait until dispatch is under way, break something, then check that every
    notification went out once and the processes carried on."""
    seeded = await seed(stack, COUNT, series=series)
    await wait_until(lambda: _sending(stack, seeded), timeout=20, interval=0.1)
    await fault()

    final = await wait_until_settled(stack, seeded, timeout=90)
    counts = Counter(state for state, _ in final.values())
    tried = await attempts(stack, seeded)
    by_status = Counter(a["status"] for a in tried)
    got = await received(stack)
    print(f"\n{fault.__name__}: states {dict(counts)}; attempts {dict(by_status)}")

    assert set(counts) <= {"sent", "delivered", "read"}, counts
    twice = [s.phone for s in seeded if got[s.phone] > 1]
    assert not twice, f"{len(twice)} phones got a reminder twice"
    # An outage well inside the write-back's patience (WRITE_BACK_RETRY_SECONDS) leaves
    # no answer unwritten: every message reached its phone, none is `unconfirmed`.
    assert by_status["unconfirmed"] == 0, by_status
    assert all(got[s.phone] == 1 for s in seeded)
    assert len(stack.live_workers()) == len(stack.workers), stack.logs()
    async with stack.client() as client:
        assert (await client.get("/readyz")).status_code == 200
    return counts, by_status


async def _sending(stack: Stack, seeded: list[Seeded]) -> bool:
    return bool((await state_counts(stack, seeded))["sending"])


async def until_every_worker_met_it(stack: Stack, since: dict[str, int]) -> None:
    """Keep an outage going until every live worker has run into it: a warning or an
    error in its log since `since` (from `stack.log_offsets()`)."""

    def met(worker: Child) -> bool:
        log = worker.read_log(since.get(worker.name, 0))
        return '"level":"warning"' in log or '"level":"error"' in log

    began = time.monotonic()
    await wait_until(
        lambda: all(met(stack.workers[i]) for i in stack.live_workers()),
        timeout=30,
        interval=0.05,
    )
    print(f"\ndown for {time.monotonic() - began:.1f}s more, until every worker met it")


def redis_port(stack: Stack) -> int:
    port = urlsplit(stack.services.redis_url).port
    assert port is not None
    return port


class TestRedis:
    async def test_flushed_during_dispatch(self, stack: Stack) -> None:
        async def flush_redis() -> None:
            client = Redis.from_url(stack.services.redis_url)
            try:
                await client.flushall()
            finally:
                await client.aclose()

        await survive(stack, 2, flush_redis)

    async def test_restarted_during_dispatch(self, stack: Stack) -> None:
        async def restart_redis() -> None:
            data_dir = stack.services.data_dir
            port = redis_port(stack)
            since = stack.log_offsets()
            await asyncio.to_thread(embedded.stop_redis, data_dir)
            await until_every_worker_met_it(stack, since)
            await asyncio.to_thread(embedded.ensure_redis, data_dir, port=port)

        await survive(stack, 3, restart_redis)


class TestPostgres:
    async def test_restarted_during_dispatch(self, stack: Stack) -> None:
        async def restart_postgres() -> None:
            data_dir = stack.services.data_dir
            since = stack.log_offsets()
            await asyncio.to_thread(embedded.stop_postgres, data_dir)
            await until_every_worker_met_it(stack, since)
            await asyncio.to_thread(embedded.ensure_postgres, data_dir, "clinic_notify_faults")

        await survive(stack, 4, restart_postgres)
