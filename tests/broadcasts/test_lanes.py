"""A broadcast's fan-out in lanes: how the members are split (evenly by member, never
an empty lane), the lanes fanned out at once on a pool (filter and static groups), a
fan-out killed in the middle resumed lane by lane, cancel stopping every lane, and
progress right at every chunk; a static group's staff members in one more lane after
the patients'."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.broadcasts import repository as broadcast_repository
from app.broadcasts import service as broadcast_service
from app.broadcasts.schemas import BroadcastIn
from app.broadcasts.service import lane_bounds, lane_keys, lane_rows
from app.config import Settings
from app.groups import repository as group_repository
from app.models import Broadcast, BroadcastLane
from tests.factories import make_patient, make_staff, unique_id
from tests.stack import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")


def lanes_of(count: int, chunk: int = 2) -> Settings:
    return Settings().model_copy(
        update={"broadcast_chunk_size": chunk, "broadcast_fan_out_lanes": count}
    )


class TestSplit:
    @pytest.mark.parametrize(
        ("members", "lanes", "rows"),
        [
            (0, 2, []),  # an empty group: one lane (that finds nobody)
            (1, 2, []),  # fewer members than lanes: one lane per member
            (3, 4, [1, 2]),
            (2, 2, [1]),
            (5, 2, [2]),
            (10, 3, [3, 6]),
            (1_000_000, 2, [500_000]),
            (7, 1, []),
        ],
    )
    async def test_lanes_of_as_many_members_and_never_an_empty_one(
        self, members: int, lanes: int, rows: list[int]
    ) -> None:
        assert lane_rows(members, lanes) == rows
        sizes = [b - a for a, b in zip([0, *rows], [*rows, members], strict=True)]
        assert max(sizes) - min(sizes) <= 1
        assert members == 0 or min(sizes) >= 1

    @pytest.mark.parametrize(
        ("quantiles", "last", "keys"),
        [
            ([], None, []),  # an empty filter group: percentile_disc of no row
            ([None, None], None, []),
            (["p-1", "p-1", "p-2"], "p-2", ["p-1"]),  # 2 members, 4 lanes: 2 lanes of 1
            (["p-1"], "p-1", []),  # 1 member, 2 lanes: 1 lane
            (["p-3", "p-6", "p-9"], "p-12", ["p-3", "p-6", "p-9"]),
        ],
    )
    async def test_quantiles_make_lanes_none_empty(
        self, quantiles: list[str | None], last: str | None, keys: list[str]
    ) -> None:
        assert lane_keys(quantiles, last) == keys

    async def test_ranges_cover_every_id_once(self) -> None:
        assert lane_bounds([]) == [("", None)]
        assert lane_bounds(["p-3", "p-7"]) == [("", "p-3"), ("p-3", "p-7"), ("p-7", None)]


async def seed(
    session: AsyncSession, ids: list[str], *, tag: str | None = None, others: int = 0
) -> str:
    """Patients of these ids (tagged `tag`, or in a static group), `others` not in the
    group; a template; returns the group's name."""
    group = unique_id("g")
    for patient_id in ids:
        await make_patient(session, id=patient_id, tags=[tag] if tag else [])
    for _ in range(others):
        await make_patient(session, tags=["other"])
    await group_repository.upsert(session, group, {"tags": [tag]} if tag else None)
    if tag is None:
        await group_repository.add_members(session, group, ids)
    await session.execute(
        text(
            "INSERT INTO templates (key, locale, title, body) VALUES "
            "('camp.lanes', 'en', 'Camp', '{patient_name}: camp on {day}') "
            "ON CONFLICT DO NOTHING"
        )
    )
    await session.commit()
    return group


async def start(db: Database, group: str) -> uuid.UUID:
    request = BroadcastIn(
        group=group,
        template="camp.lanes",
        parameters={"day": "Friday"},
        purpose="health_camp",
        send_at=datetime(2099, 1, 1, 6, tzinfo=UTC),
    )
    async with db.sessionmaker() as session:
        broadcast, _ = await broadcast_service.start(session, request)
        await session.commit()
    return broadcast.id


async def reached(db: Database, broadcast_id: uuid.UUID) -> list[str]:
    """The patients with a notification of the broadcast, one entry per notification
    (a staff member's, which has no patient, not among them)."""
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            text(
                "SELECT patient_id FROM notifications WHERE broadcast_id = :id "
                "AND patient_id IS NOT NULL ORDER BY patient_id"
            ),
            {"id": broadcast_id},
        )
        return list(rows)


async def stored_lanes(db: Database, broadcast_id: uuid.UUID) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(BroadcastLane)
            .where(BroadcastLane.broadcast_id == broadcast_id)
            .order_by(BroadcastLane.lane)
        )
        return [
            {
                "lower": lane.lower_id,
                "upper": lane.upper_id,
                "members": lane.members,
                "done": lane.done,
                **({"staff": True} if lane.staff else {}),
            }
            for lane in rows
        ]


async def progress_right(db: Database, broadcast_id: uuid.UUID, *, sent: bool = False) -> int:
    """Progress as `GET /v1/broadcasts/{id}` reads it, checked (nothing sent yet unless
    `sent`): members == scheduled."""
    async with db.sessionmaker() as session:
        _, progress = await broadcast_service.get(session, broadcast_id)
    assert sent or progress.members == progress.counts["scheduled"], progress
    return progress.members


class TestFanOutInLanes:
    async def test_a_big_filter_group_is_split_on_a_sample(
        self, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past SAMPLED_PATIENTS the bounds are quantiles of a sample: lanes of about as
        many members, and still every member once."""
        ids = [f"m-{n:04d}" for n in range(400)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, tag=unique_id("t"), others=100)
            await session.execute(text("ANALYZE patients"))
            await session.commit()
        monkeypatch.setattr(broadcast_repository, "SAMPLED_PATIENTS", 250)
        broadcast_id = await start(db, group)
        result = await broadcast_service.fan_out(
            db.sessionmaker, broadcast_id, lanes_of(2, chunk=50)
        )
        assert (result.state, result.members) == ("fanned_out", 400)
        assert await reached(db, broadcast_id) == ids
        sizes = [lane["members"] for lane in await stored_lanes(db, broadcast_id)]
        assert len(sizes) == 2 and min(sizes) >= 100, sizes

    async def test_skewed_ids_split_by_member_not_by_id(self, db: Database) -> None:
        # Nine ids close together and three far apart: ranges of ids would put nine in
        # one lane; the split puts three members in each of four.
        ids = [f"a-{n:03d}" for n in range(9)] + ["z-1", "z-2", "z-3"]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, tag=unique_id("t"), others=3)
        broadcast_id = await start(db, group)
        seen: list[int] = []

        async def check(members: int) -> None:
            seen.append(await progress_right(db, broadcast_id))

        result = await broadcast_service.fan_out(
            db.sessionmaker, broadcast_id, lanes_of(4), on_chunk=check
        )
        assert (result.state, result.members) == ("fanned_out", 12)
        assert await reached(db, broadcast_id) == sorted(ids)
        assert await stored_lanes(db, broadcast_id) == [
            {"lower": "", "upper": "a-002", "members": 3, "done": True},
            {"lower": "a-002", "upper": "a-005", "members": 3, "done": True},
            {"lower": "a-005", "upper": "a-008", "members": 3, "done": True},
            {"lower": "a-008", "upper": None, "members": 3, "done": True},
        ]
        # Four lanes of 3 in chunks of 2: two chunks each; progress right at each.
        assert result.chunks == 8 and len(seen) == 8 and max(seen) == 12

    async def test_fewer_members_than_lanes_and_an_empty_group(self, db: Database) -> None:
        async with db.sessionmaker() as session:
            two = await seed(session, ["b-1", "b-2"], tag=unique_id("t"))
            empty = await seed(session, [], tag=unique_id("t"), others=2)
        broadcast_id = await start(db, two)
        result = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(4))
        assert (result.state, result.members) == ("fanned_out", 2)
        assert [lane["members"] for lane in await stored_lanes(db, broadcast_id)] == [1, 1]
        assert await reached(db, broadcast_id) == ["b-1", "b-2"]

        broadcast_id = await start(db, empty)
        result = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(4))
        assert (result.state, result.members) == ("fanned_out", 0)
        assert await stored_lanes(db, broadcast_id) == [
            {"lower": "", "upper": None, "members": 0, "done": True}
        ]

    async def test_a_static_group_in_lanes(self, db: Database) -> None:
        ids = [f"s-{n:02d}" for n in range(9)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, others=4)
        broadcast_id = await start(db, group)
        result = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(3))
        assert (result.state, result.members) == ("fanned_out", 9)
        assert await reached(db, broadcast_id) == ids
        assert [
            (lane["upper"], lane["members"]) for lane in await stored_lanes(db, broadcast_id)
        ] == [
            ("s-02", 3),
            ("s-05", 3),
            (None, 3),
            (None, 0),  # the staff lane: a static group's, none in this one
        ]

    async def test_a_fan_out_killed_mid_way_resumes_every_lane_from_its_cursor(
        self, db: Database
    ) -> None:
        ids = [f"k-{n:03d}" for n in range(30)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, tag=unique_id("t"))
        broadcast_id = await start(db, group)

        class Killed(Exception):
            pass

        async def die_after_four_chunks(members: int) -> None:
            # The worker dies between two chunks of one lane; the other lanes' chunks
            # under way are cut off wherever they are (their transactions roll back).
            if members >= 8:
                raise Killed

        with pytest.raises(ExceptionGroup) as killed:
            await broadcast_service.fan_out(
                db.sessionmaker, broadcast_id, lanes_of(3), on_chunk=die_after_four_chunks
            )
        assert killed.group_contains(Killed)
        lanes = await stored_lanes(db, broadcast_id)
        before = await progress_right(db, broadcast_id)
        assert 8 <= before < 30 and not all(lane["done"] for lane in lanes)
        assert len(await reached(db, broadcast_id)) == before
        # The lanes stay as they were split: the resumed fan-out (with another setting)
        # goes on in the same ranges, each from its own cursor.
        result = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(5))
        assert (result.state, result.members) == ("fanned_out", 30)
        assert await reached(db, broadcast_id) == ids  # nobody twice, nobody skipped
        after = await stored_lanes(db, broadcast_id)
        assert [(lane["lower"], lane["upper"]) for lane in after] == [
            (lane["lower"], lane["upper"]) for lane in lanes
        ]
        assert [lane["members"] for lane in after] == [10, 10, 10]
        assert await progress_right(db, broadcast_id) == 30

    async def test_two_fan_outs_at_once_take_turns_lane_by_lane(self, db: Database) -> None:
        ids = [f"t-{n:03d}" for n in range(40)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, tag=unique_id("t"))
        broadcast_id = await start(db, group)
        first, second = await asyncio.gather(
            broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(2, chunk=3)),
            broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(2, chunk=3)),
        )
        assert (first.state, second.state) == ("fanned_out", "fanned_out")
        assert await reached(db, broadcast_id) == ids
        assert len(await stored_lanes(db, broadcast_id)) == 2
        assert await progress_right(db, broadcast_id) == 40


async def reached_staff(db: Database, broadcast_id: uuid.UUID) -> list[str]:
    """The staff members with a notification of the broadcast, one entry per one."""
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            text(
                "SELECT staff_id FROM notifications WHERE broadcast_id = :id "
                "AND staff_id IS NOT NULL ORDER BY staff_id"
            ),
            {"id": broadcast_id},
        )
        return list(rows)


class TestStaffAfterTheLanes:
    """A static group with patients and staff: the patients in lanes at once, the staff
    in one more lane once every patient lane is done; killed in either, resumed."""

    async def seed_both(
        self, db: Database, patients: int, staff: int
    ) -> tuple[str, list[str], list[str]]:
        """A static group of these many patients and staff members: (name, patient ids,
        staff ids), each in id order."""
        tag = unique_id("n")
        ids = [f"{tag}-p{n:02d}" for n in range(patients)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids)
            nurses = [(await make_staff(session, id=f"{tag}-s{n:02d}")).id for n in range(staff)]
            await group_repository.add_staff(session, group, nurses)
            await session.commit()
        return group, ids, nurses

    async def test_every_patient_and_staff_member_once_through_two_kills(
        self, db: Database
    ) -> None:
        group, ids, nurses = await self.seed_both(db, 9, 5)
        broadcast_id = await start(db, group)
        seen: list[tuple[int, int, int]] = []

        class Killed(Exception):
            pass

        async def check(members: int, *, die_at: int | None = None) -> None:
            # Progress is right at every chunk (one snapshot: members == scheduled), and
            # no staff member is reached before every patient is (one snapshot too: the
            # other lanes commit meanwhile).
            progress = await progress_right(db, broadcast_id)
            async with db.sessionmaker() as session:
                patients, staff = (
                    await session.execute(
                        text(
                            "SELECT count(patient_id), count(staff_id) FROM notifications "
                            "WHERE broadcast_id = :id"
                        ),
                        {"id": broadcast_id},
                    )
                ).one()
            assert staff == 0 or patients == len(ids), (patients, staff)
            seen.append((progress, patients, staff))
            if die_at is not None and members >= die_at:
                raise Killed

        async def die_in_the_patient_lanes(members: int) -> None:
            await check(members, die_at=4)

        async def die_in_the_staff_lane(members: int) -> None:
            await check(members, die_at=len(ids) + 2)

        # Killed while the patient lanes run (three lanes at once).
        with pytest.raises(ExceptionGroup) as killed:
            await broadcast_service.fan_out(
                db.sessionmaker, broadcast_id, lanes_of(3), on_chunk=die_in_the_patient_lanes
            )
        assert killed.group_contains(Killed)
        assert await reached_staff(db, broadcast_id) == []
        lanes = await stored_lanes(db, broadcast_id)
        assert len(lanes) == 4 and lanes[-1] == {
            "lower": "",
            "upper": None,
            "members": 0,
            "done": False,
            "staff": True,
        }

        # Resumed, then killed after the staff lane's first chunk (2 of 5 staff).
        with pytest.raises(Killed):
            await broadcast_service.fan_out(
                db.sessionmaker, broadcast_id, lanes_of(3), on_chunk=die_in_the_staff_lane
            )
        assert await reached(db, broadcast_id) == ids
        assert await reached_staff(db, broadcast_id) == nurses[:2]
        lanes = await stored_lanes(db, broadcast_id)
        assert all(lane["done"] for lane in lanes[:-1])
        assert (lanes[-1]["members"], lanes[-1]["done"]) == (2, False)
        assert await progress_right(db, broadcast_id) == len(ids) + 2

        # Resumed again: the staff lane from its cursor; everybody exactly once.
        result = await broadcast_service.fan_out(
            db.sessionmaker, broadcast_id, lanes_of(3), on_chunk=check
        )
        assert (result.state, result.members) == ("fanned_out", len(ids) + len(nurses))
        assert await reached(db, broadcast_id) == ids
        assert await reached_staff(db, broadcast_id) == nurses
        assert [lane["members"] for lane in await stored_lanes(db, broadcast_id)] == [3, 3, 3, 5]
        assert await progress_right(db, broadcast_id) == len(ids) + len(nurses)
        assert seen[-1] == (14, 9, 5)

    async def test_cancel_in_the_staff_lane_stops_it_and_clears_its_messages(
        self, db: Database
    ) -> None:
        group, _, nurses = await self.seed_both(db, 4, 6)
        broadcast_id = await start(db, group)

        async def cancel_at_the_first_staff_chunk(members: int) -> None:
            if members == 6:  # 4 patients, then the staff lane's first chunk of 2
                async with db.sessionmaker() as session:
                    await broadcast_service.cancel(session, broadcast_id)
                    await session.commit()

        result = await broadcast_service.fan_out(
            db.sessionmaker,
            broadcast_id,
            lanes_of(2),
            on_chunk=cancel_at_the_first_staff_chunk,
        )
        assert (result.state, result.members) == ("cancelled", 6)
        assert await reached_staff(db, broadcast_id) == nurses[:2]
        async with db.sessionmaker() as session:
            states = set(
                await session.scalars(
                    text("SELECT state FROM notifications WHERE broadcast_id = :id"),
                    {"id": broadcast_id},
                )
            )
        assert states == {"cleared"}
        again = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(2))
        assert (again.state, again.members, again.chunks) == ("cancelled", 6, 0)


class TestCancelInLanes:
    async def test_cancel_stops_every_lane_and_clears_all_they_made(self, db: Database) -> None:
        ids = [f"c-{n:03d}" for n in range(60)]
        async with db.sessionmaker() as session:
            group = await seed(session, ids, tag=unique_id("t"))
        broadcast_id = await start(db, group)
        cancelled_at: list[int] = []

        async def cancel_after_the_first_chunk(members: int) -> None:
            if not cancelled_at:
                cancelled_at.append(0)
                async with db.sessionmaker() as session:
                    await broadcast_service.cancel(session, broadcast_id)
                    await session.commit()
                # What the lanes had reached when the cancel committed (it waited for
                # the chunks under way).
                cancelled_at[0] = await progress_right(db, broadcast_id, sent=True)

        result = await broadcast_service.fan_out(
            db.sessionmaker, broadcast_id, lanes_of(3), on_chunk=cancel_after_the_first_chunk
        )
        assert result.state == "cancelled"
        made = await reached(db, broadcast_id)
        # No lane made a chunk after the cancel.
        assert len(made) == result.members == cancelled_at[0] < len(ids)
        async with db.sessionmaker() as session:
            states = set(
                await session.scalars(
                    text("SELECT state FROM notifications WHERE broadcast_id = :id"),
                    {"id": broadcast_id},
                )
            )
        assert states == {"cleared"}  # a chunk committed during the cancel too
        # A fan-out resumed after the cancel does nothing.
        again = await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(3))
        assert (again.state, again.members, again.chunks) == ("cancelled", len(made), 0)


class TestStale:
    async def test_a_fan_out_is_stale_when_no_lane_moved(self, db: Database) -> None:
        async with db.sessionmaker() as session:
            group = await seed(session, [f"w-{n}" for n in range(4)], tag=unique_id("t"))
        broadcast_id = await start(db, group)
        now = datetime.now(UTC)
        async with db.sessionmaker() as session:
            await session.execute(
                update(Broadcast)
                .where(Broadcast.id == broadcast_id)
                .values(updated_at=now - timedelta(minutes=5))
            )
            await session.commit()
            # Not split yet, not moved since: stale.
            assert broadcast_id in await broadcast_service.stale_broadcasts(
                session, lanes_of(2), now
            )
        await broadcast_service.fan_out(db.sessionmaker, broadcast_id, lanes_of(2))
        async with db.sessionmaker() as session:
            # One lane still going, moved a second ago: not stale.
            await session.execute(
                update(Broadcast)
                .where(Broadcast.id == broadcast_id)
                .values(state="fanning_out", updated_at=now - timedelta(minutes=5))
            )
            await session.execute(
                update(BroadcastLane)
                .where(BroadcastLane.broadcast_id == broadcast_id)
                .values(updated_at=now - timedelta(minutes=5))
            )
            await session.execute(
                update(BroadcastLane)
                .where(BroadcastLane.broadcast_id == broadcast_id, BroadcastLane.lane == 1)
                .values(done=False, updated_at=now - timedelta(seconds=1))
            )
            await session.commit()
            assert broadcast_id not in await broadcast_service.stale_broadcasts(
                session, lanes_of(2), now
            )
            await session.execute(
                update(BroadcastLane)
                .where(BroadcastLane.broadcast_id == broadcast_id)
                .values(updated_at=now - timedelta(minutes=5))
            )
            await session.commit()
            assert broadcast_id in await broadcast_service.stale_broadcasts(
                session, lanes_of(2), now
            )
