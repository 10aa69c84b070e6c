"""`notify bench switch`: pausing `country=IN` while N reminders to Indian patients are
being sent on WhatsApp by real worker processes: how many still went out after the pause
was committed, and, once resumed, that every reminder went out exactly once (one number
per patient: the fake WhatsApp's per-number counts show any message sent twice)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.bench.common import Result, console, fakes_and_env, fresh_database, start_workers
from app.bench.dispatch import seed, unsettled
from app.config import get_settings
from app.switches import service as switch_service
from app.switches.scope import parse_scope

DATABASE = "clinic_notify_bench_switch"
SCOPE = "country=IN"
# After the pause, sending has stopped once the fake has seen nothing new for this long.
QUIET_SECONDS = 2.0


async def _states(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT state || CASE WHEN paused_by IS NULL THEN '' ELSE ' (held)' END, count(*)"
                " FROM notifications GROUP BY 1"
            )
        )
        return {str(state): int(count) for state, count in rows.all()}


async def _not_held(engine: AsyncEngine) -> int:
    """Reminders still to send or being sent, that no switch holds."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            text(
                "SELECT count(*) FROM notifications"
                " WHERE state IN ('scheduled', 'sending') AND paused_by IS NULL"
            )
        )
    return int(count or 0)


async def _put(engine: AsyncEngine, *, paused: bool) -> int:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        _, released = await switch_service.put_switch(
            session,
            parse_scope(SCOPE),
            paused=paused,
            reason="bench",
            by="notify bench switch",
            now=datetime.now(UTC),
        )
        await session.commit()
    return released


async def measure(n: int, workers: int, batch: int, pause_at: float) -> dict[str, object]:
    database_url = await fresh_database(DATABASE)
    engine = create_async_engine(database_url)
    # Indian patients on WhatsApp (the dispatch benchmark's `whatsapp` mix).
    await seed(engine, n, "whatsapp")
    env = {"DISPATCH_BATCH_SIZE": str(batch), "DISPATCH_IDLE_SECONDS": "0.05"}
    with fakes_and_env(database_url, get_settings().redis_url, **env) as processes:
        whatsapp = processes.env["WHATSAPP_BASE_URL"]
        await start_workers(processes, workers)

        async with httpx.AsyncClient(base_url=whatsapp) as fake:

            async def accepted() -> int:
                return int((await fake.get("/_fake/stats")).json()["accepted"])

            async with engine.begin() as connection:
                await connection.execute(text("UPDATE notifications SET due_at = now()"))
            while True:
                if await accepted() >= n * pause_at:
                    break
                await asyncio.sleep(0.01)
            await _put(engine, paused=True)
            paused_at = time.perf_counter()
            at_pause = await accepted()

            # Stopped: nothing new at the fake for QUIET_SECONDS, and every reminder
            # either out or held (the workers may still be holding the rest).
            last, last_change = at_pause, paused_at
            while time.perf_counter() - last_change < QUIET_SECONDS or await _not_held(engine):
                await asyncio.sleep(0.02)
                if (now_accepted := await accepted()) != last:
                    last, last_change = now_accepted, time.perf_counter()
                if time.perf_counter() - paused_at > 600:
                    raise RuntimeError("reminders neither sent nor held 10 minutes after the pause")
            while_paused = await _states(engine)

            released = await _put(engine, paused=False)
            resumed_at = time.perf_counter()
            async with engine.connect() as poller:
                while await unsettled(poller):
                    await asyncio.sleep(0.05)
                    if time.perf_counter() - resumed_at > 600:
                        raise RuntimeError("reminders still unsettled 10 minutes after the resume")
            stats = (await fake.get("/_fake/stats")).json()
        final = await _states(engine)
    await engine.dispose()
    per_number = stats["to"]
    return {
        "reminders": n,
        "workers": workers,
        "batch": batch,
        "sent before pause": at_pause,
        "sent after pause": last - at_pause,
        "stopped within s": last_change - paused_at if last != at_pause else 0.0,
        "held while paused": while_paused.get("scheduled (held)", 0),
        "released": released,
        "sent in all": stats["accepted"],
        "sent twice": sum(1 for count in per_number.values() if count > 1),
        "lost": n - len(per_number),
        "final states": final,
    }


def run(
    sizes: list[int], workers: list[int], batch: int, pause_at: float, json_path: Path | None
) -> Result:
    result = Result(f"switch: {SCOPE} paused mid-send, then resumed")
    for n in sizes:
        for count in workers:
            console.print(f"{n:,} reminders, {count} worker(s)")
            result.add(**asyncio.run(measure(n, count, batch, pause_at)))
    result.show()
    result.write_json(json_path)
    return result
