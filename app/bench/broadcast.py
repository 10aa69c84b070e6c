"""`notify bench broadcast`: a broadcast to an N-patient filter group, fanned out by a
real worker, watched through the real API; then the history of that group's messages.

Measured: the fan-out rate (notifications scheduled per second, from the POST to
`fanned_out`), the API's memory while it answers progress (peak vs at start), that
progress never goes back and always equals what is scheduled, and the latency of the
group's history pages (first page, and every page following the cursor) on that table.
`--lanes 1 --lanes 2`: the fan-out split into that many lanes
(BROADCAST_FAN_OUT_LANES), one worker started afresh for each, same patients.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app import embedded
from app.auth import service as auth_service
from app.bench.common import (
    CpuSeconds,
    PeakMemory,
    Result,
    fakes_and_env,
    fresh_database,
    server_pid,
    start_workers,
)
from app.bench.dispatch import set_count_triggers
from app.config import get_settings
from app.notifications import service as notification_service
from app.notifications.repository import NotificationFilter

DATABASE = "clinic_notify_bench_broadcast"
SEED = """
INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                      time_zone, reminder_consent, tags, attributes)
SELECT 'b' || lpad(n::text, 8, '0'), 'Patient ' || n, '[]'::jsonb,
       '+88017' || lpad(n::text, 8, '0'), 'BD',
       CASE WHEN n % 3 = 0 THEN 'en' ELSE 'bn-BD' END,
       CASE WHEN n % 2 = 0 THEN 'Asia/Dhaka' ELSE 'Asia/Kolkata' END,
       'granted', ARRAY['camp'], jsonb_build_object('area', 'area-' || (n % 50))
FROM generate_series(1, :n) AS n
"""


async def seed(database_url: str, n: int) -> float:
    engine = create_async_engine(database_url)
    started = time.perf_counter()
    async with engine.begin() as connection:
        await connection.execute(text(SEED), {"n": n})
        await connection.execute(
            text("INSERT INTO groups (name, filter) VALUES ('camp', '{\"tags\": [\"camp\"]}')")
        )
        for locale, body in (
            ("en", "{patient_name}: camp in {area} on {day}"),
            ("bn", "{patient_name}: {area} শিবির {day}"),
        ):
            await connection.execute(
                text(
                    "INSERT INTO templates (key, locale, title, body) "
                    "VALUES ('camp.invite', :locale, 'Camp', :body)"
                ),
                {"locale": locale, "body": body},
            )
    async with engine.connect() as connection:
        await connection.execute(text("COMMIT"))
        await connection.execute(text("VACUUM ANALYZE patients"))
    await engine.dispose()
    return time.perf_counter() - started


async def _fan_out_once(client: httpx.AsyncClient, api_pid: int, cpu: CpuSeconds) -> dict[str, Any]:
    """POST one broadcast to the group and poll its progress every second until it is
    fanned out: its rate, CPU, the API's memory and whether progress was right."""
    api_start_mb = psutil.Process(api_pid).memory_info().rss / 1e6
    polls: list[dict[str, Any]] = []
    with PeakMemory(api_pid) as memory:
        cpu.start()
        started = time.perf_counter()
        answer = await client.post(
            "/v1/broadcasts",
            json={
                "group": "camp",
                "template": "camp.invite",
                "parameters": {"day": "Friday", "area": "@area"},
                "purpose": "health_camp",
                "send_at": "2099-01-01T06:00:00+00:00",
            },
        )
        answer.raise_for_status()
        broadcast_id = answer.json()["id"]
        while True:
            state = (await client.get(f"/v1/broadcasts/{broadcast_id}")).json()
            polls.append(state["progress"] | {"state": state["state"]})
            if state["state"] != "fanning_out":
                break
            await asyncio.sleep(1.0)
        seconds = time.perf_counter() - started
        used = cpu.stop()
    members = [p["members"] for p in polls]
    made = polls[-1]["members"]
    return {
        "broadcast": broadcast_id,
        "fan-out s": seconds,
        "notifications/s": made / seconds if seconds else 0.0,
        "members": made,
        "progress polls": len(polls),
        "progress ok": members == sorted(members)
        and all(p["members"] == p["scheduled"] for p in polls),
        **{
            f"{name} us/notification": used.get(name, 0.0) * 1e6 / max(1, made)
            for name in ("postgresql", "worker", "api")
        },
        "api MB start": api_start_mb,
        "api MB peak": memory.peak_mb,
    }


async def measure(
    n: int,
    chunk: int,
    pages: int,
    repeat: int,
    count_triggers: bool = True,
    lanes: list[int] | None = None,
) -> list[dict[str, Any]]:
    """For each number of `lanes` (a worker started with it), `repeat` broadcasts to the
    same N patients, each on an emptied notifications table (the same start for each),
    then the history pages of the last one's. `count_triggers=False`: the dashboard's
    counting triggers disabled after the seed (what they cost the fan-out's inserts)."""
    database_url = await fresh_database(DATABASE)
    seeded_in = await seed(database_url, n)
    _, key = await auth_service.issue_api_key(database_url, "bench")
    settings = {"BROADCAST_CHUNK_SIZE": str(chunk), "DISPATCH_LOOPS": "1"}
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    if not count_triggers:
        await set_count_triggers(engine, enabled=False)
    rows: list[dict[str, Any]] = []
    with fakes_and_env(database_url, get_settings().redis_url, **settings) as processes:
        port = embedded.free_port()
        api = processes.start("api", "api", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        processes.wait_http(f"{base}/healthz", timeout=120)
        headers = {"Authorization": f"Bearer {key}"}
        server = await server_pid(database_url)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            await client.get("/v1/groups/camp")  # warm the API up before its baseline
            for lane_count in lanes or [get_settings().broadcast_fan_out_lanes]:
                # A worker of its own per number of lanes, ready before the POST (its
                # start is not the fan-out's time).
                processes.env["BROADCAST_FAN_OUT_LANES"] = str(lane_count)
                (processes.workdir / "worker-0.ready").unlink(missing_ok=True)
                worker = (await start_workers(processes, 1))[0]
                cpu = CpuSeconds(
                    [("api", api.pid), ("worker", worker.pid)], database=DATABASE, server=server
                )
                for _ in range(repeat):
                    if rows:
                        async with engine.connect() as connection:
                            await connection.execute(text("TRUNCATE notifications CASCADE"))
                            await connection.execute(text("VACUUM ANALYZE notifications"))
                    row = await _fan_out_once(client, api.pid, cpu)
                    broadcast_id = row.pop("broadcast")
                    async with engine.connect() as connection:
                        stored, once = (
                            await connection.execute(
                                text(
                                    "SELECT count(*), count(DISTINCT patient_id) "
                                    "FROM notifications WHERE broadcast_id = :id"
                                ),
                                {"id": broadcast_id},
                            )
                        ).one()
                        split = await connection.scalar(
                            text("SELECT count(*) FROM broadcast_lanes WHERE broadcast_id = :id"),
                            {"id": broadcast_id},
                        )
                    rows.append(
                        {
                            "count triggers": "on" if count_triggers else "off",
                            "patients": n,
                            "seed s": seeded_in,
                            "chunk": chunk,
                            "lanes": split,
                            **row,
                            "each member once": stored == once == n,
                        }
                    )
                processes.stop([worker])
            first, deep = await _history(client, pages)
    in_db = await _history_in_process(async_sessionmaker(engine), pages)
    await engine.dispose()
    rows[-1] |= {
        "history first p50 ms": statistics.median(first),
        "history first p99 ms": _p99(first),
        "history pages": len(deep),
        "history page p50 ms": statistics.median(deep),
        "history page p99 ms": _p99(deep),
        # The same pages read by the service itself: the query and its attempts, no HTTP.
        "history query p50 ms": statistics.median(in_db),
        "history query p99 ms": _p99(in_db),
    }
    return rows


async def _history_in_process(
    sessionmaker: async_sessionmaker[AsyncSession], pages: int
) -> list[float]:
    where = NotificationFilter(group_name="camp")
    took: list[float] = []
    cursor: str | None = None
    async with sessionmaker() as session:
        for _ in range(pages):
            began = time.perf_counter()
            page = await notification_service.search(session, where, limit=50, cursor=cursor)
            took.append((time.perf_counter() - began) * 1000)
            cursor = page.next_cursor
            if cursor is None:
                break
    return took


async def _history(client: httpx.AsyncClient, pages: int) -> tuple[list[float], list[float]]:
    """Milliseconds of the first page (again and again) and of `pages` pages on."""
    url = "/v1/groups/camp/messages"
    first: list[float] = []
    for _ in range(100):
        began = time.perf_counter()
        (await client.get(url, params={"limit": 50})).raise_for_status()
        first.append((time.perf_counter() - began) * 1000)
    deep: list[float] = []
    cursor: str | None = None
    for _ in range(pages):
        params: dict[str, Any] = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        began = time.perf_counter()
        answer = await client.get(url, params=params)
        deep.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            break
    return first, deep


def _p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def run(
    patients: int,
    chunk: int,
    pages: int,
    repeat: int,
    json_path: Path | None,
    count_triggers: list[bool] | None = None,
    lanes: list[int] | None = None,
) -> Result:
    result = Result("broadcast: fan-out by a worker, progress and history through the API")
    rows = [
        row
        for triggers in count_triggers or [True]
        for row in asyncio.run(measure(patients, chunk, pages, repeat, triggers, lanes))
    ]
    for row in rows:
        result.add(**row)
    if repeat > 1:
        # The median of each (triggers, lanes) variant's broadcasts.
        variants: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in rows:
            variants.setdefault((row["count triggers"], row["lanes"]), []).append(row)
        for (triggers, lane_count), same in variants.items():
            result.add(
                patients=patients,
                **{"count triggers": triggers, "lanes": lane_count},
                **{
                    f"median {name}": statistics.median(row[name] for row in same)
                    for name in (
                        "fan-out s",
                        "notifications/s",
                        "postgresql us/notification",
                        "worker us/notification",
                        "api us/notification",
                    )
                },
            )
    result.show()
    result.write_json(json_path)
    return result
