"""`notify bench invitations`: Imo invitation rounds against the fake Imo.

Throughput (`--patients N ...`): seeds N patients with COPY into a fresh database, runs
an unthrottled round in a process of its own (callbacks off) and, against the same fake
in the same run, right before and right after the round, a bare aiohttp loop posting the
same invitations at the same concurrency. Reports invitations/s, the loop's rate, their
ratio (to the mean of the two loop runs), the same per CPU-second of the sending process
(steadier on a shared machine), and the peak RSS of the process running the round.

Shared limit (`--rate R --workers W`): W worker processes under IMO_RATE_LIMIT_PER_SECOND
= R run a round of R x `--seconds` patients; the fake counts invitations per second of
arrival. Reports the aggregate rate over the whole seconds and the busiest second.

Internal entry points, each its own process printing one JSON line:
    python -m app.bench.invitations round      (settings from the environment)
    python -m app.bench.invitations baseline --imo URL --requests N --concurrency C
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.bench.common import (
    PeakMemory,
    Result,
    console,
    fakes_and_env,
    fresh_database,
    start_workers,
)
from app.channels.base import basic_auth
from app.config import get_settings
from app.event_loop import new_event_loop
from app.fakes.credentials import FAKE_IMO_PASSWORD, FAKE_IMO_USERNAME

# One database per run: benchmarks of other people on the same server never meet it.
BENCH_DATABASE = f"clinic_notify_bench_invitations_{os.getpid()}"
COPY_CHUNK = 50_000
# Requests of each run of the bare loop (before and after the round).
BASELINE_REQUESTS = 50_000
# Fake Imo answers by last digit: 0 no account, 1 invited (never accepts), 3-9 invited.
# 2 (HTTP 500, retried with back-off) is left out: it measures waiting, not sending.
_DIGITS = (3, 4, 5, 6, 7, 8, 9, 1, 0, 3)
_COLUMNS = (
    "id",
    "full_name",
    "phone_numbers",
    "mobile_e164",
    "country",
    "locale",
    "time_zone",
    "facility_id",
    "facility_name",
    "reminder_consent",
)


def bench_phone(i: int) -> str:
    return f"+88017{i:07d}{_DIGITS[i % len(_DIGITS)]}"


def _patients(start: int, stop: int) -> Iterator[tuple[str, ...]]:
    for i in range(start, stop):
        phone = bench_phone(i)
        yield (
            f"bench-{i:09d}",
            f"Patient {i}",
            json.dumps([{"number": phone, "type": "mobile"}]),
            phone,
            "BD",
            "bn-BD" if i % 2 else "en",
            "Asia/Dhaka",
            "f-1",
            "Dhaka Medical",
            "granted",
        )


async def seed(database_url: str, n: int) -> float:
    """COPY n patients in chunks (flat memory), then ANALYZE; returns seconds."""
    started = time.perf_counter()
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            copier: Any = raw.driver_connection  # asyncpg's own connection, for COPY
            async with copier.transaction():
                for start in range(0, n, COPY_CHUNK):
                    await copier.copy_records_to_table(
                        "patients",
                        records=_patients(start, min(start + COPY_CHUNK, n)),
                        columns=_COLUMNS,
                    )
            await copier.execute("ANALYZE patients")
    finally:
        await engine.dispose()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- throughput


async def _throughput(n: int, concurrency: int, batch: int) -> dict[str, Any]:
    async with bench_database() as database_url:
        return await _throughput_in(database_url, n, concurrency, batch)


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """This run's fresh database, dropped at the end (a million patients take ~1 GB)."""
    database_url = await fresh_database(BENCH_DATABASE)
    try:
        yield database_url
    finally:
        admin = create_async_engine(
            make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        async with admin.connect() as connection:
            await connection.execute(
                text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
            )
        await admin.dispose()


async def _throughput_in(database_url: str, n: int, concurrency: int, batch: int) -> dict[str, Any]:
    seed_seconds = await seed(database_url, n)
    console.print(f"seeded {n:,} patients in {seed_seconds:.1f}s")
    env = {
        "IMO_INVITATION_CONCURRENCY": str(concurrency),
        "IMO_INVITATION_BATCH_SIZE": str(batch),
    }
    with fakes_and_env(database_url, get_settings().redis_url, **env) as processes:
        imo_url = processes.env["IMO_BASE_URL"]
        loop_args = ["baseline", "--imo", imo_url, "--requests", str(min(n, BASELINE_REQUESTS))]
        loop_args += ["--concurrency", str(concurrency)]
        # The loop runs right before and right after the round, and the two are averaged:
        # on a shared machine the load drifts during a long round.
        before = await _run_json(loop_args, processes.env)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.bench.invitations",
            "round",
            env=processes.env,
            stdout=subprocess.PIPE,
            cwd=processes.workdir,
        )
        with PeakMemory(child.pid) as sampled:
            stdout, _ = await child.communicate()
        if child.returncode:
            raise RuntimeError(f"the round failed ({child.returncode}); see {processes.workdir}")
        round_ = json.loads(stdout)
        after = await _run_json(loop_args, processes.env)
    rate = round_["reached"] / round_["seconds"]
    loop_rate = (before["rate"] + after["rate"]) / 2
    # Requests per CPU-second of the sending process: what the load of others changes least.
    per_cpu = round_["reached"] / round_["cpu_seconds"]
    loop_per_cpu = (before["requests"] + after["requests"]) / (
        before["cpu_seconds"] + after["cpu_seconds"]
    )
    return {
        "patients": n,
        "seed s": seed_seconds,
        "round s": round_["seconds"],
        "invitations/s": rate,
        "loop/s before": before["rate"],
        "loop/s after": after["rate"],
        "ratio": rate / loop_rate,
        "per CPU-s": per_cpu,
        "loop per CPU-s": loop_per_cpu,
        "CPU ratio": per_cpu / loop_per_cpu,
        "peak RSS MB": max(round_["peak_rss_mb"], sampled.peak_mb),
        "reached": round_["reached"],
        "counts": {name: count for name, count in round_["counts"].items() if count},
    }


async def _run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.bench.invitations", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


async def round_in_process() -> dict[str, Any]:
    """Run one round here (unthrottled by the environment's settings) until it is over."""
    # What the round imports, imported before the clock starts (as the loop's modules
    # are): the figure is the round's, not Python's start-up (0.45 s of CPU here).
    import app.channels.registry
    import app.imo.runner  # noqa: F401
    from app.imo.terminal import run_round

    settings = get_settings()
    quiet = Console(quiet=True)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    code = await run_round(settings, None, quiet, trigger="bench")
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    if code:
        raise RuntimeError(f"the round ended with {code}")
    from app.db.session import create_engine_and_sessionmaker
    from app.imo import repository as imo_repository

    engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url, pool_size=1)
    async with sessionmaker() as session:
        # A fresh database: the round just run is the only one.
        round_id = await session.scalar(text("SELECT max(id) FROM imo_invitation_rounds"))
        counts = await imo_repository.round_counts(session, int(round_id or 0))
    await engine.dispose()
    return {
        "reached": sum(counts.values()),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "counts": counts,
        # Linux: kilobytes.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def baseline(imo_url: str, requests: int, concurrency: int) -> dict[str, float]:
    """A bare aiohttp loop: the same invitation bodies, `concurrency` lanes, one session."""
    auth = basic_auth(FAKE_IMO_USERNAME, FAKE_IMO_PASSWORD)
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    url = f"{imo_url}/send_invite"
    text = "Dear Patient, please accept notifications from your clinic to receive reminders."
    next_index = 0

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            body = orjson.dumps(
                {
                    "phone": f"+99917{i:07d}{_DIGITS[i % len(_DIGITS)]}",
                    "msg": text,
                    "contents": [
                        {"key": "Name", "value": f"Patient {i}"},
                        {"key": "Message", "value": text},
                    ],
                    "title": "Invitation",
                    "action": "Accept",
                    "callback_url": f"http://127.0.0.1:9/callbacks/imo/invitations/token{i}",
                }
            )
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()

    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    return {
        "requests": requests,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rate": requests / seconds,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------- shared limit


async def _shared_limit(rate: float, workers: int, seconds: float, batch: int) -> dict[str, Any]:
    async with bench_database() as database_url:
        return await _shared_limit_in(database_url, rate, workers, seconds, batch)


async def _shared_limit_in(
    database_url: str, rate: float, workers: int, seconds: float, batch: int
) -> dict[str, Any]:
    n = int(rate * seconds)
    await seed(database_url, n)
    env = {
        "IMO_RATE_LIMIT_PER_SECOND": str(rate),
        "IMO_INVITATION_BATCH_SIZE": str(batch),
        "IMO_INVITATION_POLL_SECONDS": "0.2",
    }
    with fakes_and_env(database_url, get_settings().redis_url, **env) as processes:
        await start_workers(processes, workers, within=120)
        imo_root = processes.env["IMO_BASE_URL"].removesuffix("/api/simple")
        round_id = await start_round(processes.env)
        await wait_for_round(processes.env, round_id, within=seconds * 3 + 60)
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{imo_root}/_fake/stats?phones=false")).json()
    measured = per_second_figures(stats["per_second"]["send_invite"])
    return {
        "limit/s": rate,
        "workers": workers,
        "invitations": stats["requests"]["send_invite"],
        **measured,
        "deviation %": 100 * (measured["aggregate/s"] - rate) / rate,
    }


def per_second_figures(per_second: dict[str, int]) -> dict[str, Any]:
    """Aggregate rate over the whole seconds (the first and last are partial) and the
    busiest and quietest of them."""
    counts = [count for _, count in sorted((int(s), c) for s, c in per_second.items())]
    whole = counts[1:-1] or counts
    return {
        "seconds": len(whole),
        "aggregate/s": sum(whole) / len(whole),
        "max in 1 s": max(counts),
        "min in 1 s": min(whole),
        # Above 2 x rate would be a burst; a 1 s maximum above the rate with this one
        # within 2 x rate is arrival jitter across a second's boundary.
        "max in 2 s": max((a + b for a, b in itertools.pairwise(counts)), default=0),
        "per second": whole,
    }


async def start_round(env: dict[str, str]) -> int:
    """Start a round as the API does (create, enqueue the job) in the environment `env`."""
    from arq import create_pool

    from app.config import Settings
    from app.db.session import create_engine_and_sessionmaker
    from app.imo import endpoints as imo_endpoints
    from app.imo import service as imo_service
    from app.redis import redis_settings

    settings = Settings(
        database_url=env["DATABASE_URL"],
        redis_url=env["REDIS_URL"],
        imo_base_url=env["IMO_BASE_URL"],
        imo_username=env["IMO_USERNAME"],
    )
    engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url, pool_size=1)
    async with sessionmaker() as session:
        round_ = await imo_service.start_round(
            session, settings, trigger="bench", now=datetime.now(UTC)
        )
        await session.commit()
    await engine.dispose()
    pool = await create_pool(redis_settings(settings.redis_url))
    await pool.enqueue_job(
        imo_endpoints.RUN_JOB, round_.id, _job_id=imo_endpoints.run_job_id(round_.id)
    )
    await pool.aclose()
    return round_.id


async def wait_for_round(env: dict[str, str], round_id: int, within: float) -> None:

    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(env["DATABASE_URL"], pool_size=1)
    deadline = time.monotonic() + within
    try:
        while True:
            async with sessionmaker() as session:
                state = await session.scalar(
                    text("SELECT state FROM imo_invitation_rounds WHERE id = :id"),
                    {"id": round_id},
                )
            if state == "completed":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"round {round_id} not completed in {within:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------- entry points


def run(
    sizes: list[int],
    concurrency: int,
    batch: int,
    json_path: Path | None,
    *,
    rate: float | None = None,
    workers: int = 4,
    seconds: float = 20.0,
) -> Result:
    if rate is not None:
        result = Result(f"invitations: {workers} workers sharing one limit of {rate:,.0f}/s")
        result.add(**_run(_shared_limit(rate, workers, seconds, batch)))
    else:
        result = Result("invitations: an unthrottled round vs a bare aiohttp loop")
        for n in sizes:
            result.add(**_run(_throughput(n, concurrency, batch)))
    result.show()
    result.write_json(json_path)
    return result


def _run(coroutine: Any) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        answer: dict[str, Any] = runner.run(coroutine)
        return answer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.bench.invitations")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("round")
    loop = commands.add_parser("baseline")
    loop.add_argument("--imo", required=True)
    loop.add_argument("--requests", type=int, required=True)
    loop.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "round":
        answer = _run(round_in_process())
    else:
        answer = _run(baseline(args.imo, args.requests, args.concurrency))
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
