"""`notify bench schedule`: patients and notifications created through the API."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app import embedded
from app.auth import service as auth_service
from app.bench.common import (
    CpuSeconds,
    PeakMemory,
    Result,
    fakes_and_env,
    fresh_database,
    run_module,
    server_pid,
)
from app.config import get_settings

DATABASE = "clinic_notify_bench_schedule"


async def measure(n: int, concurrency: int, batch: int) -> list[dict[str, object]]:
    database_url = await fresh_database(DATABASE)
    _, key = await auth_service.issue_api_key(database_url, "bench")
    rows: list[dict[str, object]] = []
    with fakes_and_env(database_url, get_settings().redis_url) as processes:
        port = embedded.free_port()
        api = processes.start("api", "api", "--port", str(port))
        processes.wait_http(f"http://127.0.0.1:{port}/healthz")
        common = [
            "--api",
            f"http://127.0.0.1:{port}",
            "--api-key",
            key,
            "--first",
            "0",
            "--count",
            str(n),
            "--concurrency",
            str(concurrency),
        ]
        server = await server_pid(database_url)
        cpu = CpuSeconds([("api", api.pid)], database=DATABASE, server=server)
        with PeakMemory(api.pid) as memory:
            cpu.start()
            patients = await run_module(
                "app.bench.loadgen", "--mode", "patients", "--batch", str(batch), *common
            )
            patients["cpu"] = cpu.stop()
            cpu.start()
            notifications = await run_module(
                "app.bench.loadgen", "--mode", "notifications", *common
            )
            notifications["cpu"] = cpu.stop()
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        stored = {
            table: await connection.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
            for table in ("patients", "notifications")
        }
    await engine.dispose()
    for name, table, load in (
        (f"patients, batches of {batch}", "patients", patients),
        ("notifications, one by one", "notifications", notifications),
    ):
        rows.append(
            {
                "created": name,
                "items": load["items"],
                "requests": load["requests"],
                "items/s": load["items_rate"],
                "p50 ms": load["p50_ms"],
                "p99 ms": load["p99_ms"],
                "non-2xx": sum(load["failures"].values()),
                "peak MB api": memory.peak_mb,
                # CPU per item: what the figure is limited by (2 cores: 2 s per second).
                "us/item api": load["cpu"].get("api", 0.0) / n * 1e6,
                "us/item pg": load["cpu"].get("postgresql", 0.0) / n * 1e6,
                "us/item loadgen": load["cpu_seconds"] / n * 1e6,
                "stored": stored[table],
            }
        )
    return rows


def run(sizes: list[int], concurrency: int, batch: int, json_path: Path | None) -> Result:
    result = Result("schedule: patients and notifications created through the API")
    for n in sizes:
        for row in asyncio.run(measure(n, concurrency, batch)):
            result.add(**row)
    result.show()
    result.write_json(json_path)
    return result
