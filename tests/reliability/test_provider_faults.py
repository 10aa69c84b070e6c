"""Providers misbehaving, against the real stack: errors, time-outs, garbage and 429s.

Every message ends sent (on its own channel or fallen back to the next) or failed with
a recorded reason, and none reaches a phone twice; transient errors are retried after a
backoff; a provider answering 429 slows every worker down instead of being hammered.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.helpers import phone, put_patient, schedule
from tests.reliability.helpers import (
    Seeded,
    attempts,
    notifications,
    received,
    seed,
    wait_until_settled,
)
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

# 20% of the providers' answers are faults, a quarter of each kind.
FAULTS = {"error_rate": 0.05, "timeout_rate": 0.05, "garbage_rate": 0.05, "rate_limited_rate": 0.05}
NO_FAULTS = dict.fromkeys(FAULTS, 0.0)
RATE = 300
RETRY_BASE_SECONDS = 0.5
ENV = {
    "IMO_TIMEOUT_SECONDS": "1",
    "TWILIO_TIMEOUT_SECONDS": "1",
    "RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
    "RETRY_MAX_SECONDS": "2",
    "SENDING_STALE_AFTER_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "2",
    "DISPATCH_IDLE_SECONDS": "0.2",
    "DISPATCH_BATCH_SIZE": "100",
    "IMO_RATE_LIMIT_PER_SECOND": str(RATE),
    "TWILIO_RATE_LIMIT_PER_SECOND": str(RATE),
    # The most the service ever logs: what an operator chasing a problem would switch on.
    "LOG_LEVEL": "DEBUG",
}
ACCEPTED = frozenset({"sent", "delivered", "read"})
FINAL = ACCEPTED | {"failed"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(services: Services) -> AsyncIterator[Stack]:
    async with run_stack(
        services,
        workers=2,
        env=ENV,
        # A "timed-out" request hangs 5 s; the adapters give up after 1 s.
        fake_imo_options={"callback_delay": 0.3, "hang_seconds": 5},
        fake_twilio_options={"callback_delay": 0.3},
    ) as running:
        yield running


async def seed_under(
    stack: Stack, faults: dict[str, float], count: int, series: int
) -> tuple[list[Seeded], dict[Any, dict[str, Any]]]:
    """Seed `count` due notifications with the providers misbehaving from the start, and
    wait until every one is final."""
    await stack.reset_fakes()
    await stack.configure_fakes(imo=faults, twilio=faults)
    try:
        seeded = await seed(stack, count, series=series)
        await wait_until_settled(stack, seeded, timeout=120, done=FINAL, due_later_is_done=False)
    finally:
        await stack.configure_fakes(imo=NO_FAULTS, twilio=NO_FAULTS)
    return seeded, await notifications(stack, seeded)


def assert_once_or_failed_with_a_reason(
    seeded: list[Seeded], rows: dict[Any, dict[str, Any]], got: Counter[str]
) -> None:
    twice = [s.phone for s in seeded if got[s.phone] > 1]
    assert not twice, f"{len(twice)} phones got a reminder twice"
    for s in seeded:
        row = rows[s.id]
        if row["state"] in ACCEPTED:
            assert got[s.phone] == 1, row
        else:
            assert row["state"] == "failed" and row["failure_reason"], row
            assert got[s.phone] == 0, row


async def test_every_message_ends_sent_fallen_back_or_failed_with_a_reason(stack: Stack) -> None:
    seeded, rows = await seed_under(stack, FAULTS, 400, series=10)
    tried = await attempts(stack, seeded)
    got = await received(stack)
    imo_faults = Counter((await stack.imo_stats())["faults"])
    twilio_faults = Counter((await stack.twilio_stats())["faults"])
    counts = Counter(row["state"] for row in rows.values())
    print(
        f"\nstates {dict(counts)}; attempts {dict(Counter(a['status'] for a in tried))}; "
        f"faults imo {dict(imo_faults)} twilio {dict(twilio_faults)}"
    )

    kinds = {"error", "timeout", "garbage", "rate_limited"}
    assert set(imo_faults) == kinds and set(twilio_faults) == kinds
    assert_once_or_failed_with_a_reason(seeded, rows, got)
    # Every attempt that did not go through says why.
    for attempt in tried:
        if attempt["status"] in ("failed", "unconfirmed"):
            assert attempt["error_code"] and attempt["error_message"], attempt
    # Imo's faults fell back to SMS at once; Twilio's transient ones were retried later.
    imo_patients = {s.id for s in seeded if s.channel == "imo"}
    fell_back = [n for n in imo_patients if rows[n]["channel_index"] == 1]
    assert fell_back and all(rows[n]["channel_chain"] == ["imo", "sms"] for n in fell_back)
    assert any(row["retry_count"] > 0 for row in rows.values())
    # Twilio's garbage answers came with the message accepted: `unconfirmed`, never
    # resent, then raised by the status callbacks that followed.
    unclear = [a for a in tried if a["channel"] == "sms" and a["error_code"] == "unexpected"]
    assert len(unclear) == twilio_faults["garbage"]
    assert {a["status"] for a in unclear} <= {"unconfirmed", "sent", "delivered"}
    # A retry waits at least half the base backoff (full jitter from base/2 up).
    by_notification: dict[Any, list[Any]] = defaultdict(list)
    for attempt in tried:
        if attempt["channel"] == "sms":
            by_notification[attempt["notification_id"]].append(attempt["created_at"])
    gaps = [
        (later - earlier).total_seconds()
        for times in by_notification.values()
        for earlier, later in itertools.pairwise(times)
    ]
    assert gaps and min(gaps) >= RETRY_BASE_SECONDS / 2, sorted(gaps)[:5]


async def test_a_provider_answering_429_is_backed_off_not_hammered(stack: Stack) -> None:
    window = 4.0
    await stack.reset_fakes()
    await stack.configure_fakes(twilio={"rate_limited_rate": 1.0})
    seeded = await seed(stack, 200, series=11, imo_every=0)
    try:
        # The measurement starts once the workers have met the first 429s.
        await wait_until(lambda: _rate_limited(stack), timeout=10, interval=0.05)
        before = (await stack.twilio_stats())["requests"]
        started = time.monotonic()
        await asyncio.sleep(window)
        hits = (await stack.twilio_stats())["requests"] - before
        elapsed = time.monotonic() - started
    finally:
        await stack.configure_fakes(twilio={"rate_limited_rate": 0.0})
    print(f"\n429 for {elapsed:.1f}s: {hits} requests ({hits / elapsed:.0f}/s; limit {RATE}/s)")
    # Unpaused, 200 due messages retried every ~1 s would send ~200/s, and the rate limit
    # allows 300/s. Paused on each 429, the account sees a few chunks a second.
    assert hits < 0.15 * RATE * elapsed, hits

    await wait_until_settled(stack, seeded, timeout=60, done=FINAL, due_later_is_done=False)
    rows = await notifications(stack, seeded)
    assert {row["state"] for row in rows.values()} <= ACCEPTED
    assert_once_or_failed_with_a_reason(seeded, rows, await received(stack))


async def _rate_limited(stack: Stack) -> bool:
    return bool((await stack.twilio_stats())["faults"].get("rate_limited"))


async def test_no_log_line_holds_a_phone_number_or_message_text(stack: Stack) -> None:
    """Traffic through the API and the workers, with faults (the error paths log most),
    then every line every process wrote is searched for what must never be there."""
    key = await stack.create_api_key("log-privacy")
    numbers = [phone(digit) for digit in (3, 4, 5, 7, 9)]
    texts = []
    async with stack.client(key) as api:
        ids = []
        for number in numbers:
            patient = await put_patient(api, number)
            notification = await schedule(api, patient["id"])
            ids.append(notification["id"])
            texts.append(notification["text"])
        # Refused input quotes the number back to the caller, never into a log.
        refused = await api.put(
            "/v1/patients/p-bad",
            json={"full_name": "X", "phone_numbers": [{"number": "+8801711", "type": "mobile"}]},
        )
        assert refused.status_code == 422
        seeded, _ = await seed_under(stack, FAULTS, 100, series=12)
        for notification_id in ids:
            answer = (await api.get(f"/v1/notifications/{notification_id}")).json()
            assert answer["state"] in FINAL, answer
    secrets = {*numbers, *(n.removeprefix("+") for n in numbers), "+8801711"}
    secrets |= {s.phone for s in seeded} | {s.phone.removeprefix("+") for s in seeded}
    secrets |= set(texts) | {"Your next visit to Dhaka Medical is on 2026-12-01."}
    service = [child for child in stack.children() if child not in stack.fakes]
    lines = [
        line
        for child in service
        for line in child.log_path.read_text(errors="replace").splitlines()
    ]
    # The providers' faults were logged (with what evidence the service keeps).
    assert any("unexpected provider answer" in line for line in lines), lines
    leaks = [line for line in lines if any(secret in line for secret in secrets)]
    assert not leaks, leaks[:5]


async def test_what_cannot_go_out_in_time_expires_and_never_goes_out_late(stack: Stack) -> None:
    await stack.reset_fakes()
    await stack.configure_fakes(twilio={"error_rate": 1.0})
    expires_at = datetime.now(UTC) + timedelta(seconds=4)
    seeded = await seed(stack, 50, series=13, imo_every=0, expires_at=expires_at)
    try:
        await wait_until_settled(
            stack, seeded, timeout=30, done=frozenset({"expired"}), due_later_is_done=False
        )
    finally:
        await stack.configure_fakes(twilio=NO_FAULTS)
    # Twilio answers again. A control due now must go out: once it has, an expired one
    # that was going to go out late would have gone too.
    [control] = await seed(stack, 1, series=14, imo_every=0)
    await wait_until_settled(stack, [control], timeout=30, done=ACCEPTED, due_later_is_done=False)
    assert (await received(stack))[control.phone] == 1
    rows = await notifications(stack, seeded)
    assert {row["state"] for row in rows.values()} == {"expired"}
    assert all(row["failure_reason"] == "not sent while still useful" for row in rows.values())
    tried = await attempts(stack, seeded)
    phones = {s.phone for s in seeded}
    assert {a["status"] for a in tried} == {"failed"}
    assert max(a["created_at"] for a in tried) < expires_at
    assert not any(count for phone, count in (await received(stack)).items() if phone in phones)
