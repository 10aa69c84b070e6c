"""Workers SIGKILLed in the middle of sending, ten times, at the default settings.

Each worker holds what it claims under a lease it renews (DISPATCH_LEASE_SECONDS, 15 s);
a claim whose lease ran out is taken over by a live worker within about a second: what
had no attempt is sent, what had one (its send under way when the worker died) ends
`unconfirmed` and is never sent again. The sweeper (claims without a lease, stale after
SENDING_STALE_AFTER_SECONDS: 300 s, looked for every 60 s) cannot act within this test:
only the leases can make every notification final within a minute of the last kill.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from tests.reliability.helpers import (
    Seeded,
    attempts,
    database,
    received,
    seed,
    wait_until_settled,
)
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

KILLS = 10
# Seeded just before each kill: its own work for the kill to interrupt, however fast or
# slow the machine is (work seeded once at the start is all sent, on a fast machine,
# before replacement workers have started on a loaded one). More than a batch (500).
WAVE = 600
WORKERS = 3
# A slow provider: each message answered 0.5 s after it was taken, so that a batch is
# being sent for seconds (Twilio's default 100/s does the rest) and kills land mid-send.
SLOW_PROVIDER = {"answer_delay": 0.5, "callback_delay": 0.5}
WITHIN_SECONDS_OF_LAST_KILL = 60.0
# Left at their defaults: the test is of what a deployment gets.
DEFAULTS = (
    "DISPATCH_LEASE_SECONDS",
    "SENDING_STALE_AFTER_SECONDS",
    "SWEEP_INTERVAL_SECONDS",
    "DISPATCH_BATCH_SIZE",
    "DISPATCH_CONCURRENCY",
    "DISPATCH_IDLE_SECONDS",
    "DISPATCH_LOOPS",
    "IMO_RATE_LIMIT_PER_SECOND",
    "TWILIO_RATE_LIMIT_PER_SECOND",
)
FINAL = frozenset({"sent", "delivered", "read"})


# A victim: a worker with at least this many sends in flight (an attempt written, the
# provider's answer not yet), and at least WAITING claims not yet tried, so that it is
# still sending when the kill lands (at the tail of its batch, its last sends could all
# be answered between the look and the kill).
IN_FLIGHT = 10
WAITING = 50


@dataclass(frozen=True)
class Holder:
    """A live worker's claims under its lease, and how many are being sent."""

    index: int
    lease: uuid.UUID
    claimed: int
    in_flight: int
    waiting: int


async def test_ten_kills_mid_send_at_default_settings_all_final_within_a_minute(
    services: Services,
) -> None:
    rng = random.Random()
    async with run_stack(
        services,
        workers=WORKERS,
        fake_imo_options=SLOW_PROVIDER,
        fake_twilio_options=SLOW_PROVIDER,
    ) as stack:
        assert not [name for name in DEFAULTS if name in stack.env]
        seeded: list[Seeded] = []
        waits: list[float] = []
        victims: list[Holder] = []
        # Sends each victim had in flight when it died (left `sending` under its lease).
        died_sending: list[int] = []
        started = time.monotonic()
        last_kill = started
        for number in range(KILLS):
            # A live worker besides the victim, to take its batch over when the lease
            # runs out. Replacements start at each kill, and take 20-30 s to start on a
            # loaded machine: the wait is before a kill, never timed.
            began = time.monotonic()
            await wait_until(lambda: len(stack.ready_workers()) >= 2, timeout=180, interval=0.05)
            waits.append(time.monotonic() - began)
            seeded += await seed(stack, WAVE, series=number)
            holders: list[Holder] = await wait_until(
                lambda: sending(stack), timeout=120, interval=0.02
            )
            victim = rng.choice(holders)
            victims.append(victim)
            await stack.kill_worker(victim.index)
            last_kill = time.monotonic()
            await stack.start_worker(wait=False)
            died_sending.append(await in_flight_under(stack, victim.lease))
        kill_phase = last_kill - started

        left = max(0.0, last_kill + WITHIN_SECONDS_OF_LAST_KILL - time.monotonic())
        final = await wait_until_settled(stack, seeded, timeout=left, due_later_is_done=False)
        after_last_kill = time.monotonic() - last_kill
        counts = Counter(state for state, _ in final.values())
        tried = await attempts(stack, seeded)
        got = await received(stack)

        by_status = Counter(a["status"] for a in tried)
        unconfirmed = {a["notification_id"] for a in tried if a["status"] == "unconfirmed"}
        phone_of = {s.id: s.phone for s in seeded}
        unconfirmed_received = sum(1 for n in unconfirmed if got[phone_of[n]])
        print(
            f"\n{len(seeded)} notifications, {KILLS} kills over {kill_phase:.1f}s (waits for"
            f" a second ready worker {[round(w, 1) for w in waits]}s); victims' claims"
            f" {[v.claimed for v in victims]}, in flight at death {died_sending};"
            f" all final {after_last_kill:.1f}s after the last kill (at most"
            f" {WITHIN_SECONDS_OF_LAST_KILL:.0f}); states {dict(counts)}; attempts"
            f" {dict(by_status)}; unconfirmed {len(unconfirmed)}, of which the fakes received"
            f" {unconfirmed_received}"
        )
        # Every kill landed in the middle of the victim's sending.
        assert all(died_sending), died_sending
        # Every notification final (a channel took it), none left behind or failed.
        assert set(counts) <= FINAL, counts
        # Nothing sent twice: at most one message per phone on any channel.
        twice = [s for s in seeded if got[s.phone] > 1]
        for s in twice[:4]:
            print(s, got[s.phone], [a for a in tried if a["notification_id"] == s.id])
        assert not twice, len(twice)
        # Everything not unconfirmed reached its phone exactly once.
        assert all(got[s.phone] == 1 for s in seeded if s.id not in unconfirmed)


async def sending(stack: Stack) -> list[Holder]:
    """The live workers (by the pid in their lease's holder) with IN_FLIGHT sends or more
    in flight and WAITING claims or more still to try."""
    pids = {
        child.process.pid: index
        for index, child in enumerate(stack.workers)
        if child.alive and child.process is not None
    }
    async with database(stack) as conn:
        rows = await conn.execute(
            text(
                """
                SELECT l.id, substring(l.holder FROM '[0-9]+$')::int AS pid,
                       count(DISTINCT n.id) AS claimed, count(a.id) AS in_flight,
                       count(DISTINCT n.id) FILTER (WHERE NOT EXISTS (
                           SELECT FROM delivery_attempts AS t WHERE t.notification_id = n.id
                       )) AS waiting
                FROM notifications AS n
                JOIN dispatch_leases AS l ON l.id = n.lease_id AND l.expires_at > now()
                LEFT JOIN delivery_attempts AS a
                       ON a.notification_id = n.id AND a.status = 'sending'
                WHERE n.state = 'sending'
                GROUP BY l.id
                """
            )
        )
        return [
            Holder(pids[row.pid], row.id, row.claimed, row.in_flight, row.waiting)
            for row in rows
            if row.pid in pids and row.in_flight >= IN_FLIGHT and row.waiting >= WAITING
        ]


async def in_flight_under(stack: Stack, lease: uuid.UUID) -> int:
    """Sends in flight under `lease` (a dead worker's: until its lease runs out, 10-15 s
    after the kill, nothing settles them)."""
    async with database(stack) as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM notifications AS n"
                " JOIN delivery_attempts AS a ON a.notification_id = n.id"
                " WHERE n.lease_id = :lease AND n.state = 'sending' AND a.status = 'sending'"
            ),
            {"lease": lease},
        )
    return int(count or 0)
