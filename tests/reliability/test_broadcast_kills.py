"""A worker SIGKILLed in the middle of a broadcast's fan-out: another worker resumes it
from the cursor, and every member ends with exactly one notification."""

from __future__ import annotations

import time

import asyncpg
import pytest

from tests.stack import Services, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

MEMBERS = 60_000
ENV = {
    # Small chunks: the kill lands between many commits, mid fan-out.
    "BROADCAST_CHUNK_SIZE": "500",
    "BROADCAST_RESUME_AFTER_SECONDS": "2",
}


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def seed_patients(connection: asyncpg.Connection, count: int) -> None:
    await connection.execute(
        """
        INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                              time_zone, reminder_consent, tags)
        SELECT 'k' || lpad(n::text, 7, '0'), 'Patient ' || n, '[]'::jsonb,
               '+88017' || lpad(n::text, 8, '0'), 'BD', 'en', 'Asia/Dhaka', 'granted',
               ARRAY['camp']
        FROM generate_series(1, $1) AS n
        """,
        count,
    )
    await connection.execute(
        "INSERT INTO groups (name, filter) VALUES ('camp', '{\"tags\": [\"camp\"]}')"
    )
    await connection.execute(
        "INSERT INTO templates (key, locale, title, body) "
        "VALUES ('camp.invite', 'en', 'Camp', '{patient_name}: camp on {day}')"
    )


async def test_a_killed_fan_out_resumes_and_reaches_everyone_once(services: Services) -> None:
    async with run_stack(services, workers=1, env=ENV) as stack:
        connection = await asyncpg.connect(plain(stack.database_url))
        try:
            await seed_patients(connection, MEMBERS)
            key = await stack.create_api_key()
            async with stack.client(key) as api:
                answer = await api.post(
                    "/v1/broadcasts",
                    json={
                        "group": "camp",
                        "template": "camp.invite",
                        "parameters": {"day": "Friday"},
                        "purpose": "health_camp",
                        # Tomorrow: the dispatcher leaves them alone during the test.
                        "send_at": "2099-01-01T06:00:00+00:00",
                    },
                )
                assert answer.status_code == 202, answer.text
                broadcast_id = answer.json()["id"]

                async def members() -> int:
                    value = await connection.fetchval(
                        "SELECT members FROM broadcasts WHERE id = $1", broadcast_id
                    )
                    return int(value)

                async def a_tenth_done() -> bool:
                    return await members() >= MEMBERS // 10

                await wait_until(a_tenth_done, timeout=60, interval=0.02)
                killed_at = await members()
                await stack.kill_worker(0)
                assert 0 < killed_at < MEMBERS, killed_at
                # While nobody fans out, progress says what is done, and stays put.
                progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
                assert progress["state"] == "fanning_out"
                assert progress["progress"]["members"] == progress["progress"]["scheduled"]
                started = time.monotonic()
                await stack.start_worker()

                async def done() -> bool:
                    state = await connection.fetchval(
                        "SELECT state FROM broadcasts WHERE id = $1", broadcast_id
                    )
                    return bool(state == "fanned_out")

                await wait_until(done, timeout=90, interval=0.2)
                print(f"\nkilled at {killed_at}/{MEMBERS}; resumed and done in "
                      f"{time.monotonic() - started:.1f}s")  # fmt: skip
                total, distinct = await connection.fetchrow(
                    "SELECT count(*), count(DISTINCT patient_id) FROM notifications "
                    "WHERE broadcast_id = $1",
                    broadcast_id,
                )
                assert (total, distinct) == (MEMBERS, MEMBERS)
                final = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()["progress"]
                assert (final["members"], final["scheduled"]) == (MEMBERS, MEMBERS)
        finally:
            await connection.close()
