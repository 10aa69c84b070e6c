"""Broadcasts: start, fan-out in chunks with per-recipient text, resume, cancel, progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.broadcasts import service as broadcast_service
from app.config import Settings
from app.models import Broadcast, BroadcastLane, Notification
from tests.clock import daytime_zone, night_zone
from tests.factories import api_client, make_patient, make_staff, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def put_template(api: httpx.AsyncClient, key: str, locale: str, body: str) -> None:
    answer = await api.put(f"/v1/templates/{key}/{locale}", json={"title": "Clinic", "body": body})
    assert answer.status_code == 200, answer.text


async def group_of(api: httpx.AsyncClient, tag: str) -> str:
    name = unique_id("g")
    answer = await api.put(f"/v1/groups/{name}", json={"filter": {"tags": [tag]}})
    assert answer.status_code == 200, answer.text
    return name


def broadcast(group: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "group": group,
        "template": "camp.invite",
        "parameters": {"day": "Friday", "area": "@area"},
        "purpose": "health_camp",
    }
    values.update(overrides)
    return values


async def messages_of(session: AsyncSession, broadcast_id: str) -> list[Notification]:
    rows = await session.scalars(
        select(Notification)
        .where(Notification.broadcast_id == broadcast_id)
        .order_by(Notification.patient_id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


def small_chunks() -> Settings:
    # One lane: these tests' sessions share one connection, which can run one statement
    # at a time (tests/broadcasts/test_lanes.py fans out in lanes on a pool).
    return Settings().model_copy(update={"broadcast_chunk_size": 2, "broadcast_fan_out_lanes": 1})


class TestFanOut:
    async def test_one_message_per_member_in_their_language_with_their_fields(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        await put_template(api, "camp.invite", "bn", "{patient_name}: {area} শিবির {day}")
        tag = unique_id("t")
        for n, (locale, area) in enumerate([("bn-BD", "Mirpur"), ("en", None), ("fr", "Paris")]):
            attributes = {} if area is None else {"area": area}
            await make_patient(
                db_session,
                id=f"{tag}-{n}",
                full_name=f"P{n}",
                locale=locale,
                tags=[tag],
                attributes=attributes,
                time_zone=daytime_zone(),
            )
        await make_patient(db_session, tags=["other"])
        group = await group_of(api, tag)
        started = await api.post("/v1/broadcasts", json=broadcast(group))
        assert started.status_code == 202, started.text
        broadcast_id = started.json()["id"]

        result = await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        assert (result.state, result.members, result.chunks) == ("fanned_out", 3, 2)
        texts = [(m.locale, m.body) for m in await messages_of(db_session, broadcast_id)]
        assert texts == [
            ("bn", "P0: Mirpur শিবির Friday"),
            ("en", "P1: camp in  on Friday"),
            ("en", "P2: camp in Paris on Friday"),
        ]
        progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
        assert progress["state"] == "fanned_out"
        assert progress["progress"]["members"] == 3 and progress["progress"]["scheduled"] == 3

    async def test_a_text_goes_to_every_member_as_written(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        tag = unique_id("t")
        for n, locale in enumerate(["bn-BD", "en"]):
            await make_patient(
                db_session, id=f"{tag}-{n}", locale=locale, tags=[tag], time_zone=daytime_zone()
            )
        group = await group_of(api, tag)
        # Neither a field (`@name`) nor a placeholder in a text is filled: it is a text.
        text = "Closed on Friday.\nCome on Saturday, @name {patient_name}."
        started = await api.post(
            "/v1/broadcasts",
            json={"group": group, "text": text, "purpose": "announcement"},
        )
        assert started.status_code == 202, started.text
        assert (started.json()["text"], started.json()["parameters"]) == (text, {})
        assert started.json()["template"] == "conversation.staff_message"

        result = await broadcast_service.fan_out(
            db_sessionmaker, started.json()["id"], small_chunks()
        )
        assert (result.state, result.members) == ("fanned_out", 2)
        messages = await messages_of(db_session, started.json()["id"])
        assert [(m.body, m.template_key) for m in messages] == [
            (text, "conversation.staff_message")
        ] * 2

    async def test_due_inside_each_members_window(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        tag = unique_id("t")
        day, night = daytime_zone(), night_zone()
        await make_patient(db_session, id=f"{tag}-day", tags=[tag], time_zone=day)
        await make_patient(db_session, id=f"{tag}-night", tags=[tag], time_zone=night)
        started = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
        broadcast_id = started.json()["id"]
        await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        by_day, by_night = await messages_of(db_session, broadcast_id)
        now = datetime.now(UTC)
        assert by_day.due_at <= now + timedelta(seconds=5)
        night_local = by_night.due_at.astimezone(ZoneInfo(night))
        assert night_local.time() == Settings().messaging_window_start
        assert by_night.due_at > now
        assert by_day.expires_at - by_day.due_at == timedelta(
            days=Settings().expiry_days("health_camp")
        )

    async def test_a_resumed_fan_out_reaches_nobody_twice_and_skips_nobody(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        tag = unique_id("t")
        for n in range(5):
            await make_patient(db_session, id=f"{tag}-{n}", tags=[tag])
        started = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
        broadcast_id = started.json()["id"]
        # A worker that died after its chunk's insert but before the cursor: the cursor
        # is back at the start, the first members have their message already.
        await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        stored = await db_session.get(Broadcast, broadcast_id, populate_existing=True)
        assert stored is not None
        (lane,) = await db_session.scalars(
            select(BroadcastLane)
            .where(BroadcastLane.broadcast_id == broadcast_id)
            .execution_options(populate_existing=True)
        )
        stored.state = "fanning_out"
        lane.cursor, lane.members, lane.done = f"{tag}-1", 2, False
        await db_session.flush()
        result = await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        assert result.members == 5
        patients = [m.patient_id for m in await messages_of(db_session, broadcast_id)]
        assert patients == [f"{tag}-{n}" for n in range(5)]

    async def test_a_static_group_in_member_order(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        ids = [(await make_patient(db_session)).id for _ in range(3)]
        group = unique_id("g")
        await api.put(f"/v1/groups/{group}", json={"members": ids})
        started = await api.post("/v1/broadcasts", json=broadcast(group))
        broadcast_id = started.json()["id"]
        await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        patients = [m.patient_id for m in await messages_of(db_session, broadcast_id)]
        assert patients == sorted(ids)
        assert {m.group_name for m in await messages_of(db_session, broadcast_id)} == {group}


class TestStaffMembers:
    """A static group's staff members: fanned out after its patients, by the same
    statement, each once, in their locale and the window of STAFF_TIME_ZONE."""

    async def test_after_the_patients_each_staff_member_once(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        await put_template(api, "camp.invite", "bn", "{patient_name}: {area} শিবির {day}")
        patients = [(await make_patient(db_session)).id for _ in range(3)]
        tag = unique_id("s")
        nurses = [
            (await make_staff(db_session, id=f"{tag}-{n}", name=f"Nurse {n}", locale=locale)).id
            for n, locale in enumerate(["bn-BD", "en"])
        ]
        group = unique_id("g")
        put = await api.put(f"/v1/groups/{group}", json={"members": patients, "staff": nurses})
        assert put.status_code == 200, put.text
        started = await api.post("/v1/broadcasts", json=broadcast(group))
        broadcast_id = started.json()["id"]
        settings = small_chunks().model_copy(update={"staff_time_zone": "Asia/Dhaka"})

        result = await broadcast_service.fan_out(db_sessionmaker, broadcast_id, settings)

        # Patients 2 + 1, staff 2 + 0: four chunks, five members.
        assert (result.state, result.members, result.chunks) == ("fanned_out", 5, 4)
        messages = await messages_of(db_session, broadcast_id)
        assert sorted(m.patient_id for m in messages if m.patient_id) == sorted(patients)
        to_staff = sorted((m for m in messages if m.staff_id), key=lambda m: str(m.staff_id))
        assert [(m.staff_id, m.patient_id, m.locale, m.body) for m in to_staff] == [
            (nurses[0], None, "bn", "Nurse 0:  শিবির Friday"),
            (nurses[1], None, "en", "Nurse 1: camp in  on Friday"),
        ]
        for message in to_staff:
            # Staff go by email whatever the broadcast's chain: the dispatcher fixes it.
            assert message.channel_chain is None
            local = message.due_at.astimezone(ZoneInfo("Asia/Dhaka")).time()
            assert Settings().messaging_window_start <= local < Settings().messaging_window_end
        staff_lane = await db_session.scalar(
            select(BroadcastLane)
            .where(BroadcastLane.broadcast_id == broadcast_id, BroadcastLane.staff)
            .execution_options(populate_existing=True)
        )
        # One more lane after the patients' one: the staff's, with its own cursor.
        assert staff_lane is not None
        assert (staff_lane.lane, staff_lane.cursor, staff_lane.members, staff_lane.done) == (
            1,
            nurses[-1],
            2,
            True,
        )

        # Resumed from the start of the staff: nobody twice.
        stored = await db_session.get(Broadcast, broadcast_id, populate_existing=True)
        assert stored is not None
        stored.state = "fanning_out"
        staff_lane.cursor, staff_lane.members, staff_lane.done = "", 0, False
        await db_session.flush()
        await broadcast_service.fan_out(db_sessionmaker, broadcast_id, settings)
        assert len(await messages_of(db_session, broadcast_id)) == 5

        history = await api.get(f"/v1/staff/{nurses[0]}/messages")
        assert history.status_code == 200, history.text
        [item] = history.json()["items"]
        assert (item["staff_id"], item["patient_id"]) == (nurses[0], None)

    async def test_a_filter_group_has_no_staff_phase(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        tag = unique_id("t")
        await make_patient(db_session, tags=[tag])
        started = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
        broadcast_id = started.json()["id"]
        result = await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        assert (result.members, result.chunks) == (1, 1)
        lanes = await db_session.scalars(
            select(BroadcastLane.staff).where(BroadcastLane.broadcast_id == broadcast_id)
        )
        assert list(lanes) == [False]


class TestCancel:
    async def test_cancel_clears_the_unsent_and_stops_the_fan_out(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        tag = unique_id("t")
        for n in range(5):
            await make_patient(db_session, id=f"{tag}-{n}", tags=[tag])
        started = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
        broadcast_id = started.json()["id"]

        async def cancel_after_the_first_chunk(members: int) -> None:
            if members == 2:
                first = (await messages_of(db_session, broadcast_id))[0]
                first.state = "sent"
                await db_session.flush()
                answer = await api.post(f"/v1/broadcasts/{broadcast_id}/cancel")
                assert answer.status_code == 200

        result = await broadcast_service.fan_out(
            db_sessionmaker, broadcast_id, small_chunks(), on_chunk=cancel_after_the_first_chunk
        )
        assert (result.state, result.members) == ("cancelled", 2)
        states = [m.state for m in await messages_of(db_session, broadcast_id)]
        assert states == ["sent", "cleared"]
        progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()["progress"]
        assert (progress["sent"], progress["cleared"], progress["scheduled"]) == (1, 1, 0)


class TestProgress:
    async def test_counts_agree_with_a_recount_whatever_the_states(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Progress counts only the messages that left `scheduled` and takes the rest
        as scheduled: it must still say what a count of every row says."""
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        tag = unique_id("t")
        for n in range(8):
            await make_patient(db_session, id=f"{tag}-{n}", tags=[tag], country="IN")
        started = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
        broadcast_id = started.json()["id"]
        await broadcast_service.fan_out(db_sessionmaker, broadcast_id, small_chunks())
        messages = await messages_of(db_session, broadcast_id)
        # The fan-out writes each member's country itself (the trigger then leaves it).
        assert {m.country for m in messages} == {"IN"}
        moved = ["sending", "sent", "delivered", "read", "failed", "denied", "muted"]
        for message, state in zip(messages, moved, strict=False):
            message.state = state
        await db_session.flush()

        progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()["progress"]
        recount: dict[str, int] = {}
        for message in messages:
            recount[message.state] = recount.get(message.state, 0) + 1
        assert progress == {
            "members": 8,
            # `scheduled` as the API reports it: not sent yet (muted and sending too).
            "scheduled": recount["scheduled"] + recount["muted"] + recount["sending"],
            "sent": 1,
            "delivered": 1,
            "read": 1,
            "failed": 1,
            "denied": 1,
            "cleared": 0,
            "expired": 0,
        }
        assert recount["scheduled"] == 1


class TestStart:
    async def test_idempotent_on_its_key(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        group = await group_of(api, unique_id("t"))
        headers = {"Idempotency-Key": unique_id("k")}
        first = await api.post("/v1/broadcasts", json=broadcast(group), headers=headers)
        again = await api.post("/v1/broadcasts", json=broadcast(group), headers=headers)
        assert (first.status_code, again.status_code) == (202, 202)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert first.json()["id"] == again.json()["id"]
        other = await api.post(
            "/v1/broadcasts", json=broadcast(group, purpose="other"), headers=headers
        )
        assert other.status_code == 422
        count = await db_session.scalar(
            select(func.count()).select_from(Broadcast).where(Broadcast.group_name == group)
        )
        assert count == 1

    async def test_keys_are_scoped_per_api_key(
        self,
        api: httpx.AsyncClient,
        api_app: FastAPI,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Client B reusing client A's key, with A's body or another, starts its own
        broadcast and never sees A's."""
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        group = await group_of(api, unique_id("t"))
        headers = {"Idempotency-Key": unique_id("camp")}
        first = await api.post("/v1/broadcasts", json=broadcast(group), headers=headers)
        async with api_client(api_app, db_sessionmaker) as other_client:
            other = await other_client.post(
                "/v1/broadcasts", json=broadcast(group), headers=headers
            )
            again = await other_client.post(
                "/v1/broadcasts", json=broadcast(group), headers=headers
            )
            changed = await other_client.post(
                "/v1/broadcasts", json=broadcast(group, purpose="other"), headers=headers
            )
        assert first.status_code == other.status_code == again.status_code == 202
        assert other.json()["id"] != first.json()["id"]
        assert "Idempotent-Replayed" not in other.headers
        assert again.json()["id"] == other.json()["id"]
        # Against B's own first body, not A's: a 422 naming the key, about B's broadcast.
        assert changed.status_code == 422
        assert changed.json()["error"]["details"][0]["field"] == "Idempotency-Key"

    @pytest.mark.parametrize(
        ("overrides", "status", "field"),
        [
            ({"template": "no.such"}, 422, "template"),
            ({"template": "camp.bn_only"}, 422, "template"),
            ({"parameters": {"day": "Friday"}}, 422, "parameters.area"),
            ({"group": "no-such-group"}, 404, None),
            ({"channel_chain": ["pigeon"]}, 422, "channel_chain[0]"),
            # A template or a text, one of the two; a text takes no parameters.
            ({"text": "Closed on Friday"}, 422, "body"),
            ({"template": None}, 422, "body"),
            ({"template": None, "text": "Closed on Friday"}, 422, "body"),
            ({"template": None, "text": ""}, 422, "text"),
            ({"template": None, "text": "x" * 501, "parameters": {}}, 422, "text"),
        ],
    )
    async def test_a_bad_broadcast_is_refused(
        self,
        api: httpx.AsyncClient,
        overrides: dict[str, Any],
        status: int,
        field: str | None,
    ) -> None:
        await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
        await put_template(api, "camp.bn_only", "bn", "{patient_name}")
        body = {**broadcast(await group_of(api, unique_id("t"))), **overrides}
        answer = await api.post("/v1/broadcasts", json=body)
        assert answer.status_code == status, answer.text
        if field is not None:
            assert answer.json()["error"]["details"][0]["field"] == field
