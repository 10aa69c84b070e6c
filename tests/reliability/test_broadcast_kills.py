"""A worker SIGKILLed in the middle of a broadcast's fan-out in lanes: another worker
resumes every unfinished lane from its cursor, in the ranges split at the start, and
every member ends with exactly one notification; for a filter group and a static one
(whose staff members, in one more lane after the patients', each get one too)."""

from __future__ import annotations

import time

import asyncpg
import pytest

from tests.stack import Services, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

MEMBERS = 60_000
LANES = 3
STAFF = 1_200  # of the static group: its staff lane, after the patient lanes
ENV = {
    # Small chunks: the kill lands between many commits, mid fan-out, in every lane.
    "BROADCAST_CHUNK_SIZE": "500",
    "BROADCAST_RESUME_AFTER_SECONDS": "2",
    "BROADCAST_FAN_OUT_LANES": str(LANES),
}


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def seed_patients(connection: asyncpg.Connection, count: int, group: str) -> None:
    """`count` patients and group `camp` of them all: a filter (`group` "filter") or a
    static list of every one of them ("static")."""
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
    if group == "filter":
        await connection.execute(
            "INSERT INTO groups (name, filter) VALUES ('camp', '{\"tags\": [\"camp\"]}')"
        )
    else:
        await connection.execute("INSERT INTO groups (name, filter) VALUES ('camp', NULL)")
        await connection.execute(
            "INSERT INTO group_members (group_name, patient_id) SELECT 'camp', id FROM patients"
        )
        await connection.execute(
            """
            INSERT INTO staff (id, name, email, locale)
            SELECT 's' || lpad(n::text, 5, '0'), 'Nurse ' || n,
                   'nurse' || n || '@clinic.example.org', 'en'
            FROM generate_series(1, $1) AS n
            """,
            STAFF,
        )
        await connection.execute(
            "INSERT INTO group_staff_members (group_name, staff_id) SELECT 'camp', id FROM staff"
        )
    await connection.execute(
        "INSERT INTO templates (key, locale, title, body) "
        "VALUES ('camp.invite', 'en', 'Camp', '{patient_name}: camp on {day}')"
    )


LANES_SQL = (
    "SELECT lane, lower_id, upper_id, members, done FROM broadcast_lanes "
    "WHERE broadcast_id = $1 AND NOT staff ORDER BY lane"
)
STAFF_LANE_SQL = (
    "SELECT lane, cursor, members, done FROM broadcast_lanes WHERE broadcast_id = $1 AND staff"
)


@pytest.mark.parametrize("group", ["filter", "static"])
async def test_a_killed_fan_out_resumes_and_reaches_everyone_once(
    services: Services, group: str
) -> None:
    async with run_stack(services, workers=1, env=ENV) as stack:
        connection = await asyncpg.connect(plain(stack.database_url))
        try:
            await seed_patients(connection, MEMBERS, group)
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
                        "SELECT coalesce(sum(members), 0) FROM broadcast_lanes "
                        "WHERE broadcast_id = $1",
                        broadcast_id,
                    )
                    return int(value)

                async def a_tenth_done() -> bool:
                    return await members() >= MEMBERS // 10

                await wait_until(a_tenth_done, timeout=60, interval=0.02)
                await stack.kill_worker(0)
                killed_at = await members()
                assert 0 < killed_at < MEMBERS, killed_at
                split = await connection.fetch(LANES_SQL, broadcast_id)
                # Split evenly by member, and killed with every lane under way.
                assert len(split) == LANES
                assert not any(lane["done"] for lane in split), split
                staff_lane = await connection.fetch(STAFF_LANE_SQL, broadcast_id)
                staff = STAFF if group == "static" else 0
                if staff:
                    # Not begun while the patient lanes are under way.
                    [begun] = staff_lane
                    assert (begun["lane"], begun["members"], begun["done"]) == (LANES, 0, False)
                else:
                    assert staff_lane == []
                # While nobody fans out, progress says what is done, and stays put.
                progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
                assert progress["state"] == "fanning_out"
                assert progress["progress"]["members"] == progress["progress"]["scheduled"]
                assert progress["progress"]["members"] == killed_at
                started = time.monotonic()
                await stack.start_worker()
                # Progress right at every poll while the new worker resumes the lanes.
                polls: list[int] = []

                async def done_while_polled() -> bool:
                    answer = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
                    reached = answer["progress"]
                    assert reached["members"] == reached["scheduled"], reached
                    polls.append(reached["members"])
                    return bool(answer["state"] == "fanned_out")

                await wait_until(done_while_polled, timeout=90, interval=0.2)
                assert polls == sorted(polls) and polls[0] >= killed_at, polls

                print(f"\n{group}: killed at {killed_at}/{MEMBERS} in {LANES} lanes; resumed "
                      f"and done in {time.monotonic() - started:.1f}s")  # fmt: skip
                # The same lanes (the ranges split at the start), each done, about as
                # many each (a filter's split is exact or of a sample: see the unit tests).
                after = await connection.fetch(LANES_SQL, broadcast_id)
                assert [(r["lower_id"], r["upper_id"]) for r in after] == [
                    (r["lower_id"], r["upper_id"]) for r in split
                ]
                assert all(r["done"] for r in after)
                sizes = [r["members"] for r in after]
                assert sum(sizes) == MEMBERS and min(sizes) > MEMBERS // (2 * LANES), sizes
                if staff:
                    [ended] = await connection.fetch(STAFF_LANE_SQL, broadcast_id)
                    assert (ended["members"], ended["done"]) == (STAFF, True)
                    assert ended["cursor"] == f"s{STAFF:05d}"
                total, distinct, distinct_staff = await connection.fetchrow(
                    "SELECT count(*), count(DISTINCT patient_id), count(DISTINCT staff_id) "
                    "FROM notifications WHERE broadcast_id = $1",
                    broadcast_id,
                )
                assert (total, distinct, distinct_staff) == (MEMBERS + staff, MEMBERS, staff)
                final = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()["progress"]
                assert (final["members"], final["scheduled"]) == (MEMBERS + staff, MEMBERS + staff)
        finally:
            await connection.close()
