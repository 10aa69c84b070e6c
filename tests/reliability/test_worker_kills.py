"""Workers SIGKILLed in the middle of dispatch batches, over and over, while others run.

The claim (`FOR UPDATE SKIP LOCKED`) and the attempt written before each send are what
make a kill safe: notifications claimed but not handed to a provider are requeued by the
sweeper; those whose send was under way are settled `sent` with their attempt
`unconfirmed`, never sent again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from tests.reliability.helpers import (
    attempts,
    received,
    seed,
    state_counts,
    wait_until_settled,
)
from tests.stack import Services, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

KILLS = 10
NOTIFICATIONS = 3000

ENV = {
    # A dead worker's batch is taken over when its lease runs out (DISPATCH_LEASE_SECONDS,
    # 15 s); the stale rule, for claims without a lease, should not fire here.
    "SENDING_STALE_AFTER_SECONDS": "60",
    "SWEEP_INTERVAL_SECONDS": "2",
    "DISPATCH_IDLE_SECONDS": "0.2",
    # Slow enough that sending outlasts the ten kills (~40 s with the replacements'
    # start-up): at 150/s each, a CI run had sent everything by the seventh kill, and the
    # last kills met no work at all.
    "IMO_RATE_LIMIT_PER_SECOND": "60",
    "TWILIO_RATE_LIMIT_PER_SECOND": "60",
}


async def test_ten_sigkills_lose_nothing_and_send_nothing_twice(services: Services) -> None:
    rng = random.Random()
    async with run_stack(
        services,
        workers=3,
        env=ENV,
        fake_imo_options={"callback_delay": 0.5},
        fake_twilio_options={"callback_delay": 0.5},
    ) as stack:
        seeded = await seed(stack, NOTIFICATIONS, series=1)
        started = time.monotonic()
        killed_while_sending = []
        for _ in range(KILLS):
            # Kills at random moments: the pause is the chaos schedule, not a wait for
            # something. (Pacing them by progress instead bunches them: the workers claim
            # hundreds at a time, and a dead worker's batch stalls until the sweeper.)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            # Kill only workers that are dispatching, and keep at least one running.
            await wait_until(lambda: len(stack.ready_workers()) >= 2, timeout=30, interval=0.05)
            counts = await state_counts(stack, seeded)
            killed_while_sending.append(counts["sending"])
            victim = rng.choice(stack.ready_workers())
            await stack.kill_worker(victim)
            await stack.start_worker(wait=False)
        kill_phase = time.monotonic() - started

        final = await wait_until_settled(stack, seeded, timeout=120)
        settled_after = time.monotonic() - started
        counts = Counter(state for state, _ in final.values())
        tried = await attempts(stack, seeded)
        got = await received(stack)

        by_status = Counter(a["status"] for a in tried)
        unconfirmed = {a["notification_id"] for a in tried if a["status"] == "unconfirmed"}
        phone_of = {s.id: s.phone for s in seeded}
        unconfirmed_received = sum(1 for n in unconfirmed if got[phone_of[n]])
        print(
            f"\nkill phase {kill_phase:.1f}s, all settled after {settled_after:.1f}s; "
            f"sending at each kill {killed_while_sending}; states {dict(counts)}; "
            f"attempts {dict(by_status)}; unconfirmed {len(unconfirmed)} "
            f"({len(unconfirmed) / KILLS:.1f} per kill), of which the fakes received "
            f"{unconfirmed_received}"
        )
        # Every kill hit a worker in the middle of dispatching.
        assert all(killed_while_sending), killed_while_sending
        # Nothing lost: every notification a channel took, none left behind.
        assert set(counts) <= {"sent", "delivered", "read"}, counts
        # Nothing sent twice: at most one message per phone on any channel.
        twice = {s.id: s for s in seeded if got[s.phone] > 1}
        if twice:
            for s in list(twice.values())[:4]:
                print(s, got[s.phone])
                for a in tried:
                    if a["notification_id"] == s.id:
                        print("   ", a)
        assert not twice, len(twice)
        # Everything not unconfirmed reached its phone exactly once.
        confirmed = [s for s in seeded if s.id not in unconfirmed]
        assert all(got[s.phone] == 1 for s in confirmed)
