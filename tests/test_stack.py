"""The end-to-end stack itself: it starts, answers, and survives losing a worker."""

from __future__ import annotations

import signal

import pytest

from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


class TestStack:
    async def test_every_process_answers(self, stack: Stack) -> None:
        async with stack.client() as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        assert isinstance(await stack.imo_stats(), dict)
        assert isinstance(await stack.twilio_stats(), dict)
        assert isinstance(await stack.whatsapp_stats(), dict)
        assert stack.live_workers()

    async def test_api_keys_are_inserted_into_the_stacks_database(self, stack: Stack) -> None:
        api_key = await stack.create_api_key("e2e-smoke")
        async with stack.client(api_key) as client:
            assert (await client.get("/v1/templates")).status_code == 200
        async with stack.client("cn_not-a-key") as client:
            assert (await client.get("/v1/templates")).status_code == 401

    async def test_logs_are_kept_per_process(self, stack: Stack) -> None:
        logs = stack.logs()
        for name in ("fake-imo", "fake-twilio", "fake-whatsapp", "api", "worker-0"):
            assert f"----- {name} " in logs


@pytest.mark.fault
class TestWorkers:
    async def test_a_killed_worker_is_replaced(self, stack: Stack) -> None:
        index = await stack.start_worker()
        assert index in stack.live_workers()
        assert await stack.kill_worker(index, signal.SIGKILL) == -signal.SIGKILL
        assert index not in stack.live_workers()
        replacement = await stack.start_worker()
        assert replacement in stack.live_workers()
        async with stack.client() as client:
            assert (await client.get("/readyz")).status_code == 200

    async def test_sigterm_stops_a_worker_cleanly(self, stack: Stack) -> None:
        index = await stack.start_worker()
        assert await stack.kill_worker(index, signal.SIGTERM) == 0
