"""Workers SIGKILLed in the middle of dispatch batches, over and over, while others run.

The claim (`FOR UPDATE SKIP LOCKED`) and the attempt written before each send are what
make a kill safe: notifications claimed but not handed to a provider are requeued (by the
live workers once the dead one's lease runs out, or by the sweeper); those whose send was
under way are settled `sent` with their attempt `unconfirmed`, never sent again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from tests.reliability.helpers import (
    DONE_STATES,
    Seeded,
    attempts,
    received,
    seed,
    state_counts,
    wait_until_settled,
)
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

KILLS = 10
NOTIFICATIONS = 3000

ENV = {
    # The sweeper settles a dead worker's batch within ~12 s, inside the test.
    "SENDING_STALE_AFTER_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "2",
    "DISPATCH_IDLE_SECONDS": "0.2",
    "IMO_RATE_LIMIT_PER_SECOND": "150",
    "TWILIO_RATE_LIMIT_PER_SECOND": "150",
}


# Default settings (DISPATCH_LEASE_SECONDS 15, the sweeper every 60 s for claims stale
# after 300 s): only the leases can settle a dead worker's batch within the minute.
SLOW_PROVIDER = {"callback_delay": 0.5, "answer_delay": 0.5}
LEASE_NOTIFICATIONS = 6000
PACED_LEFT_AT_LAST_KILL = 2000
WITHIN_SECONDS_OF_LAST_KILL = 60


async def test_ten_sigkills_lose_nothing_and_send_nothing_twice(services: Services) -> None:
    async with run_stack(
        services,
        workers=3,
        env=ENV,
        fake_imo_options={"callback_delay": 0.5},
        fake_twilio_options={"callback_delay": 0.5},
    ) as stack:
        await kill_ten_times(stack, NOTIFICATIONS, series=1, settle_within=120)


async def test_a_dead_workers_batch_is_taken_over_when_its_lease_runs_out(
    services: Services,
) -> None:
    """A slow provider (each answer 0.5 s after the message was taken), so that every
    kill lands mid-send; default settings: every notification is final within a minute
    of the last kill, and none is sent twice."""
    async with run_stack(
        services,
        workers=3,
        fake_imo_options=SLOW_PROVIDER,
        fake_twilio_options=SLOW_PROVIDER,
    ) as stack:
        await kill_ten_times(
            stack,
            LEASE_NOTIFICATIONS,
            series=2,
            settle_within=WITHIN_SECONDS_OF_LAST_KILL,
            paced=True,
        )


async def kill_ten_times(
    stack: Stack,
    notifications: int,
    *,
    series: int,
    settle_within: float,
    paced: bool = False,
) -> None:
    """SIGKILL a dispatching worker KILLS times (a new one started for each); then every
    notification must be final within `settle_within` seconds of the last kill, each
    confirmed one received once, and none received twice.

    `paced`: the kills are spread over the progress (the i-th waits until i/(KILLS - 1)
    of all but PACED_LEFT_AT_LAST_KILL notifications are final, and some are being
    sent), so that the last one leaves work behind, its own batch included, on a fast
    machine and on a slow one alike."""
    rng = random.Random()
    seeded = await seed(stack, notifications, series=series)
    started = time.monotonic()
    killed_while_sending = []
    for number in range(KILLS):
        # Kill only workers that are dispatching, and keep at least one running.
        # (Generous: a worker takes seconds to start, tens on a loaded machine.)
        await wait_until(lambda: len(stack.ready_workers()) >= 2, timeout=120, interval=0.05)
        if paced:
            target = number * (len(seeded) - PACED_LEFT_AT_LAST_KILL) // (KILLS - 1)
            await wait_until(
                lambda target=target: paced_kill_due(stack, seeded, target),
                timeout=120,
                interval=0.05,
            )
        else:
            # Kills at random moments: the pause is the chaos schedule, not a wait for
            # something. (Pacing them by progress instead bunches them: the workers
            # claim hundreds at a time, and a dead worker's batch stalls until the
            # sweeper.)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
        counts = await state_counts(stack, seeded)
        killed_while_sending.append(counts["sending"])
        victim = rng.choice(stack.ready_workers())
        await stack.kill_worker(victim)
        await stack.start_worker(wait=False)
    kill_phase = time.monotonic() - started
    last_kill = time.monotonic()

    final = await wait_until_settled(stack, seeded, timeout=settle_within)
    settled_after = time.monotonic() - started
    after_last_kill = time.monotonic() - last_kill
    counts = Counter(state for state, _ in final.values())
    tried = await attempts(stack, seeded)
    got = await received(stack)

    by_status = Counter(a["status"] for a in tried)
    unconfirmed = {a["notification_id"] for a in tried if a["status"] == "unconfirmed"}
    phone_of = {s.id: s.phone for s in seeded}
    unconfirmed_received = sum(1 for n in unconfirmed if got[phone_of[n]])
    print(
        f"\nkill phase {kill_phase:.1f}s, all settled after {settled_after:.1f}s "
        f"({after_last_kill:.1f}s after the last kill); "
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


async def paced_kill_due(stack: Stack, seeded: list[Seeded], final: int) -> bool:
    counts = await state_counts(stack, seeded)
    done = sum(counts[state] for state in DONE_STATES)
    return done >= final and counts["sending"] > 0
