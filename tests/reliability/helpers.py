"""Helpers of the fault tests: seed thousands of due notifications straight into a
stack's database, watch them settle, and count what the fake providers received."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tests.clock import daytime_zone
from tests.stack import Stack

# Where the service has nothing left to do, or a channel took the message.
DONE_STATES = frozenset({"sent", "delivered", "read", "failed", "denied", "cleared", "expired"})


@dataclass(frozen=True)
class Seeded:
    id: uuid.UUID
    phone: str
    channel: str  # the channel it should go out on: "imo" (subscribed) or "sms"


@asynccontextmanager
async def database(stack: Stack) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the stack's database (its own engine, disposed after)."""
    engine = create_async_engine(stack.database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


def phone_number(series: int, number: int, digit: int) -> str:
    """A Bangladeshi mobile, unique per (series, number), ending in the fakes' `digit`."""
    return f"+8801{series % 10}{number:07d}{digit}"


async def seed(
    stack: Stack,
    count: int,
    *,
    series: int,
    imo_every: int = 2,
    digits: tuple[int, ...] = (4, 5, 9),
    due_at: datetime | None = None,
    expires_at: datetime | None = None,
    purpose: str = "appointment_reminder",
) -> list[Seeded]:
    """`count` due notifications, one patient (and phone) each; every `imo_every`-th
    patient is subscribed on Imo (0: none). Inserted set-based: seeding 5,000 takes
    a fraction of a second."""
    now = datetime.now(UTC)
    zone = daytime_zone()
    rows = []
    for n in range(count):
        digit = digits[n % len(digits)]
        phone = phone_number(series, n, digit)
        channel = "imo" if imo_every and n % imo_every == 0 else "sms"
        rows.append(Seeded(uuid.uuid4(), phone, channel))
    patient_ids = [f"r{series}-{n}" for n in range(count)]
    async with database(stack) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country,
                                      locale, time_zone, facility_id, facility_name,
                                      reminder_consent)
                SELECT v.id, 'Rahim Uddin',
                       jsonb_build_array(jsonb_build_object('number', v.phone, 'type', 'mobile')),
                       v.phone, 'BD', 'en', :zone, 'f-12', 'Dhaka Medical', 'granted'
                FROM unnest(CAST(:ids AS text[]), CAST(:phones AS text[])) AS v(id, phone)
                """
            ),
            {"ids": patient_ids, "phones": [r.phone for r in rows], "zone": zone},
        )
        await conn.execute(
            text(
                """
                INSERT INTO imo_authorizations (patient_id, status, subscribed_at)
                SELECT id, 'subscribed', now() FROM unnest(CAST(:ids AS text[])) AS v(id)
                """
            ),
            {"ids": [p for p, r in zip(patient_ids, rows, strict=True) if r.channel == "imo"]},
        )
        await conn.execute(
            text(
                """
                INSERT INTO notifications (id, patient_id, purpose, template_key, locale,
                                           variables, title, body, state, due_at, expires_at,
                                           channel_index, retry_count)
                SELECT v.id, v.patient_id, :purpose, 'appointment_reminder.basic', 'en',
                       '{}'::jsonb, 'Appointment Reminder',
                       'Your next visit to Dhaka Medical is on 2026-12-01.', 'scheduled',
                       :due_at, :expires_at, 0, 0
                FROM unnest(CAST(:ids AS uuid[]), CAST(:patient_ids AS text[]))
                     AS v(id, patient_id)
                """
            ),
            {
                "ids": [r.id for r in rows],
                "patient_ids": patient_ids,
                "purpose": purpose,
                "due_at": due_at or now - timedelta(seconds=1),
                "expires_at": expires_at or now + timedelta(days=4),
            },
        )
    return rows


async def states(stack: Stack, seeded: list[Seeded]) -> dict[uuid.UUID, tuple[str, bool]]:
    """Each notification's (state, due now)."""
    async with database(stack) as conn:
        result = await conn.execute(
            text(
                "SELECT id, state, due_at <= now() FROM notifications "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [s.id for s in seeded]},
        )
        return {row[0]: (row[1], row[2]) for row in result}


async def notifications(stack: Stack, seeded: list[Seeded]) -> dict[uuid.UUID, dict[str, Any]]:
    """Each notification's state, channel chain and index, retries and failure reason."""
    async with database(stack) as conn:
        result = await conn.execute(
            text(
                "SELECT id, state, channel_chain, channel_index, retry_count, failure_reason "
                "FROM notifications WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [s.id for s in seeded]},
        )
        return {row.id: dict(row._mapping) for row in result}


async def state_counts(stack: Stack, seeded: list[Seeded]) -> Counter[str]:
    return Counter(state for state, _ in (await states(stack, seeded)).values())


async def attempts(stack: Stack, seeded: list[Seeded]) -> list[dict[str, Any]]:
    async with database(stack) as conn:
        result = await conn.execute(
            text(
                "SELECT a.id, a.notification_id, a.channel, a.status, a.error_code, "
                "a.error_message, a.provider_message_id, a.created_at "
                "FROM delivery_attempts AS a "
                "WHERE a.notification_id = ANY(CAST(:ids AS uuid[])) ORDER BY a.id"
            ),
            {"ids": [s.id for s in seeded]},
        )
        return [dict(row._mapping) for row in result]


async def wait_until_settled(
    stack: Stack,
    seeded: list[Seeded],
    *,
    timeout: float,
    done: frozenset[str] = DONE_STATES,
    due_later_is_done: bool = True,
) -> dict[uuid.UUID, tuple[str, bool]]:
    """Poll until every notification is in `done` (or, with `due_later_is_done`, due
    again later); fail with the state counts when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        current = await states(stack, seeded)
        if all(
            state in done or (due_later_is_done and state == "scheduled" and not due)
            for state, due in current.values()
        ):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not settled within {timeout}s: {Counter(s for s, _ in current.values())}"
            )
        await asyncio.sleep(0.5)


async def received(stack: Stack) -> Counter[str]:
    """Messages each phone received, on any channel: what Imo sent plus what Twilio
    accepted."""
    imo = await stack.imo_stats()
    twilio = await stack.twilio_stats()
    counts: Counter[str] = Counter(imo["delivered"])
    counts.update(twilio["to"])
    return counts
