"""Invitation rounds worked by `InvitationRunner` on real PostgreSQL and Redis, against
the fake Imo over a real socket: what each answer records, who is invited, the window
pause, a dead worker's batch, and several runners on one round."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import select, text

from app.channels.base import Invitation
from app.config import Settings
from app.imo import repository as imo_repository
from app.imo import runner as runner_module
from app.imo import service as imo_service
from app.imo.repository import Candidate
from app.imo.runner import _Pacer
from app.imo.service import ClaimedBatch, Idle
from app.models import ImoInvitationBatch, ImoRoundPause, WebhookEvent
from app.notifications.window import MessagingWindow
from app.switches import service as switch_service
from app.switches.scope import parse_scope
from app.webhooks import service as webhook_service
from tests.clock import daytime_zone, night_zone
from tests.fake_servers import FakeImo
from tests.imo.conftest import RunnerFactory, round_settings
from tests.imo.helpers import (
    authorizations,
    invite_phone,
    round_state,
    seed_patients,
    set_authorization,
    start_round,
)
from tests.stack import Database
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def counts(db: Database, round_id: int) -> dict[str, int]:
    async with db.sessionmaker() as session:
        found = await imo_repository.round_counts(session, round_id)
    return {name: count for name, count in found.items() if count}


class TestAnswers:
    async def test_each_answer_of_the_fake_is_recorded(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        phones = {
            "invited": invite_phone(1, 3),
            "never_accepts": invite_phone(2, 1),
            "no_account": invite_phone(3, 0),
            "imo_fails": invite_phone(4, 2),
            "subscribed": invite_phone(5, 4),
        }
        async with db.engine.begin() as connection:
            ids = dict(
                zip(phones, await seed_patients(connection, list(phones.values())), strict=True)
            )
        # The fake knows this number accepted an earlier invitation (not recorded here).
        fake_imo.configure(callback_delay=0.0)
        runner = make_runner(round_settings(db, fake_imo))
        await runner.imo.invite(invitation(phones["subscribed"]))
        round_id = await start_round(db, runner.settings)

        idle = await runner.work(round_id, asyncio.Event())

        assert idle.reason == "completed"
        assert await counts(db, round_id) == {
            "invited": 2,
            "no_imo_account": 1,
            "subscribed": 1,
            "transient": 1,
        }
        async with db.engine.connect() as connection:
            found = {pid: status for pid, (status, _) in (await authorizations(connection)).items()}
        assert found == {
            ids["invited"]: "invited",
            ids["never_accepts"]: "invited",
            ids["no_account"]: "no_imo_account",
            ids["subscribed"]: "subscribed",
        }
        # The patient Imo failed is left for the next round, after one retry here.
        assert fake_imo.requests_per_phone()[phones["imo_fails"]] == 2
        assert await round_state(db, round_id) == "completed"

    async def test_a_patient_imo_says_is_subscribed_raises_imo_subscribed_once(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        phone = invite_phone(6, 4)
        async with db.engine.begin() as connection:
            [patient_id] = await seed_patients(connection, [phone])
        name = f"clinic-{uuid.uuid4().hex[:8]}"
        settings = Settings(app_env="test", webhook_allow_private=True)
        async with db.sessionmaker() as session:
            await webhook_service.put_endpoint(
                session, settings, name, "http://127.0.0.1:9/", ["imo.subscribed"], True
            )
            await session.commit()
        try:
            fake_imo.configure(callback_delay=0.0)
            runner = make_runner(round_settings(db, fake_imo))
            # The fake knows this number accepted an earlier invitation (not recorded here).
            await runner.imo.invite(invitation(phone))
            round_id = await start_round(db, runner.settings)
            assert (await runner.work(round_id, asyncio.Event())).reason == "completed"
            async with db.sessionmaker() as session:
                # That earlier invitation's accept, arriving now: no second event.
                await imo_service.mark_subscribed(session, patient_id)
                await session.commit()
                events = (
                    await session.scalars(
                        select(WebhookEvent).where(WebhookEvent.patient_id == patient_id)
                    )
                ).all()
            assert [(e.type, e.data["patient_id"]) for e in events] == [
                ("imo.subscribed", patient_id)
            ]
        finally:
            async with db.sessionmaker() as session:
                await webhook_service.put_endpoint(
                    session, settings, name, "http://127.0.0.1:9/", ["imo.subscribed"], False
                )
                await session.commit()

    async def test_unexpected_answers_are_reported_counted_and_left_for_the_next_round(
        self,
        db: Database,
        fake_imo: FakeImo,
        make_runner: RunnerFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        reported: list[tuple[str, str, dict[str, Any]]] = []
        monkeypatch.setattr(
            "app.channels.reporting.report_unexpected", lambda *args: reported.append(args)
        )
        phones = [invite_phone(n, 3) for n in range(3)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones)
        fake_imo.configure(garbage_rate=1.0)
        runner = make_runner(round_settings(db, fake_imo))
        round_id = await start_round(db, runner.settings)

        assert (await runner.work(round_id, asyncio.Event())).reason == "completed"

        assert await counts(db, round_id) == {"unexpected": 3}
        assert len(reported) == 3
        assert all(provider == "imo" for provider, _, _ in reported)
        # Evidence without the number: masked.
        assert not any(
            phone in orjson.dumps(detail).decode() for phone in phones for *_, detail in reported
        )
        async with db.engine.connect() as connection:
            assert await authorizations(connection) == {}
        # The next round tries them again, once each.
        fake_imo.configure(garbage_rate=0.0)
        second = await start_round(db, runner.settings)
        await runner.work(second, asyncio.Event())
        assert await counts(db, second) == {"invited": 3}
        assert set(fake_imo.requests_per_phone().values()) == {2}

    async def test_not_subscribed_is_recorded(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        # The fake never answers an invitation so; a scripted Imo does.
        async def not_subscribed(request: web.Request) -> web.Response:
            body = {"status": "failure", "response": {"error_code": "not_subscribed"}}
            return web.json_response(body)

        app = web.Application()
        app.router.add_post("/api/simple/send_invite", not_subscribed)
        scripted = web.AppRunner(app, access_log=None)
        await scripted.setup()
        site = web.TCPSite(scripted, "127.0.0.1", 0)
        await site.start()
        try:
            async with db.engine.begin() as connection:
                [patient_id] = await seed_patients(connection, [invite_phone(1, 5)])
            url = f"http://127.0.0.1:{scripted.addresses[0][1]}/api/simple"
            runner = make_runner(round_settings(db, fake_imo, imo_base_url=url))
            round_id = await start_round(db, runner.settings)
            await runner.work(round_id, asyncio.Event())
        finally:
            await scripted.cleanup()
        assert await counts(db, round_id) == {"not_subscribed": 1}
        async with db.engine.connect() as connection:
            assert (await authorizations(connection))[patient_id][0] == "not_subscribed"


class TestWhoIsInvited:
    async def test_candidates_and_the_reinvite_rule(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        now = datetime.now(UTC)
        old, recent = now - timedelta(days=181), now - timedelta(days=10)
        cases = {
            # name: (authorisation status, last invited, invited in this round?)
            "new": (None, None, True),
            "subscribed_long_ago": ("subscribed", old, False),
            "invited_long_ago": ("invited", old, True),
            "invited_recently": ("invited", recent, False),
            "not_subscribed_long_ago": ("not_subscribed", old, True),
            "no_account_recently": ("no_imo_account", recent, False),
        }
        phones = {name: invite_phone(n, 1) for n, name in enumerate(cases)}
        async with db.engine.begin() as connection:
            ids = dict(
                zip(cases, await seed_patients(connection, list(phones.values())), strict=True)
            )
            for name, (status, at, _) in cases.items():
                if status is not None:
                    await set_authorization(connection, ids[name], status, at)
            # Never: no consent, or no mobile.
            await seed_patients(
                connection, [invite_phone(90, 1)], prefix="denied", consent="denied"
            )
            [landline] = await seed_patients(connection, [invite_phone(91, 1)], prefix="landline")
            await connection.execute(
                text("UPDATE patients SET mobile_e164 = NULL WHERE id = :id"), {"id": landline}
            )
        runner = make_runner(round_settings(db, fake_imo))
        round_id = await start_round(db, runner.settings)

        await runner.work(round_id, asyncio.Event())

        expected = {phones[name] for name, (*_, invited) in cases.items() if invited}
        assert fake_imo.requests_per_phone() == dict.fromkeys(expected, 1)
        async with db.engine.connect() as connection:
            found = await authorizations(connection)
        assert all(found[ids[name]][1] > now for name, (*_, invited) in cases.items() if invited)
        assert found[ids["subscribed_long_ago"]][0] == "subscribed"

    async def test_a_limit_invites_that_many(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        async with db.engine.begin() as connection:
            await seed_patients(connection, [invite_phone(n, 3) for n in range(20)])
        runner = make_runner(round_settings(db, fake_imo))
        round_id = await start_round(db, runner.settings, limit=9)
        await runner.work(round_id, asyncio.Event())
        assert await counts(db, round_id) == {"invited": 9}
        assert await round_state(db, round_id) == "completed"

    async def test_several_runners_invite_each_patient_once(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        phones = [invite_phone(n, 3 + n % 7) for n in range(300)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones[:150], time_zone=daytime_zone())
            await seed_patients(connection, phones[150:], prefix="q", time_zone="Asia/Dhaka")
        settings = round_settings(db, fake_imo, imo_rate_limit_per_second=3000)
        runners = [make_runner(settings) for _ in range(3)]
        round_id = await start_round(db, settings)
        window = MessagingWindow(settings.messaging_window_start, settings.messaging_window_end)
        open_now = window.contains(datetime.now(UTC), "Asia/Dhaka")

        await asyncio.gather(*(runner.work(round_id, asyncio.Event()) for runner in runners))

        reached = 300 if open_now else 150
        assert fake_imo.requests_per_phone() == dict.fromkeys(
            phones[: reached if open_now else 150], 1
        )
        assert sum((await counts(db, round_id)).values()) == reached


class TestConcurrentRounds:
    async def test_a_second_start_says_a_round_is_running(
        self, db: Database, fake_imo: FakeImo
    ) -> None:
        settings = round_settings(db, fake_imo)
        first = await start_round(db, settings)
        with pytest.raises(imo_service.RoundRunning) as refused:
            await start_round(db, settings)
        assert refused.value.round_id == first

    async def test_two_starts_at_once_make_one_round(self, db: Database, fake_imo: FakeImo) -> None:
        settings = round_settings(db, fake_imo)
        answers = await asyncio.gather(
            *(start_round(db, settings) for _ in range(4)), return_exceptions=True
        )
        started = [a for a in answers if isinstance(a, int)]
        refused = [a for a in answers if isinstance(a, imo_service.RoundRunning)]
        assert len(started) == 1 and len(refused) == 3
        assert {r.round_id for r in refused} == set(started)

    async def test_a_new_round_can_start_when_the_last_completed(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        runner = make_runner(round_settings(db, fake_imo))
        first = await start_round(db, runner.settings)
        assert (await runner.work(first, asyncio.Event())).reason == "completed"
        assert await start_round(db, runner.settings) != first


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def put_switch(db: Database, scope: str, *, paused: bool) -> None:
    async with db.sessionmaker() as session:
        await switch_service.put_switch(
            session, parse_scope(scope), paused=paused, reason="t", by="t", now=datetime.now(UTC)
        )
        await session.commit()


class TestSwitch:
    async def test_a_paused_imo_channel_stops_the_round_mid_batch_and_resuming_ends_it(
        self,
        db: Database,
        fake_imo: FakeImo,
        make_runner: RunnerFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(runner_module, "SWITCH_RECHECK_SECONDS", 0.0)
        phones = [invite_phone(n, 3) for n in range(40)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones, time_zone=daytime_zone())
        # 250/s: groups of 5 requests, each group checks the switches.
        settings = round_settings(
            db, fake_imo, imo_rate_limit_per_second=250, imo_invitation_batch_size=40
        )
        runner = make_runner(settings)
        round_id = await start_round(db, settings)

        async def pause() -> None:
            await wait_until(
                lambda: sum(fake_imo.requests_per_phone().values()) >= 10, interval=0.001
            )
            await put_switch(db, "channel=imo", paused=True)

        pauser = asyncio.create_task(pause())
        idle = await runner.work(round_id, asyncio.Event())
        await pauser
        assert idle.reason == "switch"
        sent = sum(fake_imo.requests_per_phone().values())
        assert 10 <= sent < 40
        assert await counts(db, round_id) == {"invited": sent}
        # Paused: nothing more goes out...
        assert (await runner.work(round_id, asyncio.Event())).reason == "switch"
        assert sum(fake_imo.requests_per_phone().values()) == sent
        # ...a pause of another channel does not stop it, and resumed, it ends, each
        # patient invited once.
        # One spell recorded for the dashboard, however often the slots saw the switch.
        assert [(p.reason, p.detail) for p in await pauses(db, round_id)] == [
            ("switch", "switch channel=imo is paused")
        ]
        await put_switch(db, "channel=imo", paused=False)
        await put_switch(db, "channel=sms", paused=True)
        assert (await runner.work(round_id, asyncio.Event())).reason == "completed"
        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)
        assert await counts(db, round_id) == {"invited": 40}


class TestWindow:
    async def test_the_closing_window_pauses_the_round_until_the_next_opening(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        zone = "Asia/Dhaka"  # UTC+6, no daylight saving
        phones = [invite_phone(n, 3) for n in range(40)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones, time_zone=zone)
        # 19:59:59 in Dhaka; the window closes at 20:00.
        clock = Clock(datetime(2026, 11, 23, 13, 59, 59, tzinfo=UTC))
        # 250/s: groups of 5 requests, each group checks the window.
        settings = round_settings(
            db, fake_imo, imo_rate_limit_per_second=250, imo_invitation_batch_size=40
        )
        runner = make_runner(settings, clock=clock)
        round_id = await start_round(db, settings)

        async def close_the_window() -> None:
            await wait_until(
                lambda: sum(fake_imo.requests_per_phone().values()) >= 10, interval=0.001
            )
            clock.now = datetime(2026, 11, 23, 14, 0, 1, tzinfo=UTC)

        closer = asyncio.create_task(close_the_window())
        idle = await runner.work(round_id, asyncio.Event())
        await closer

        opening = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 08:00 in Dhaka
        assert (idle.reason, idle.paused_until) == ("paused", opening)
        sent = sum(fake_imo.requests_per_phone().values())
        assert 10 <= sent < 40
        assert await counts(db, round_id) == {"invited": sent}
        async with db.sessionmaker() as session:
            progress = await imo_service.round_progress(session, round_id, clock.now)
            [batch] = (await session.scalars(_batches(round_id))).all()
        assert progress is not None and progress.state == "paused"
        assert progress.paused_until == opening
        assert (batch.state, batch.not_before, batch.sent_through) == ("waiting", opening, None)

        # Nothing happens before the opening...
        clock.now = opening - timedelta(minutes=1)
        assert (await runner.work(round_id, asyncio.Event())).reason == "paused"
        assert sum(fake_imo.requests_per_phone().values()) == sent
        # ...and why is on record: the window, till its opening; a look 12 hours later
        # is a new spell of it.
        [spell, later] = await pauses(db, round_id)
        assert (spell.reason, spell.until) == ("window", opening)
        assert spell.detail == "messaging window closed in Asia/Dhaka"
        assert (later.reason, later.started_at) == ("window", opening - timedelta(minutes=1))
        # ...and at the opening the round goes on where it stopped.
        clock.now = opening
        assert (await runner.work(round_id, asyncio.Event())).reason == "completed"
        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)
        assert await counts(db, round_id) == {"invited": 40}

    async def test_a_zone_at_night_waits_while_a_zone_in_daytime_is_invited(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        day, night = [invite_phone(n, 3) for n in range(5)], [invite_phone(n, 4) for n in range(5)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, day, time_zone=daytime_zone())
            await seed_patients(connection, night, prefix="n", time_zone=night_zone())
        runner = make_runner(round_settings(db, fake_imo))
        round_id = await start_round(db, runner.settings)

        idle = await runner.work(round_id, asyncio.Event())

        assert idle.reason == "paused" and idle.paused_until is not None
        assert runner.window.next_moment(datetime.now(UTC), night_zone()) == idle.paused_until
        assert fake_imo.requests_per_phone() == dict.fromkeys(day, 1)


async def pauses(db: Database, round_id: int) -> list[ImoRoundPause]:
    async with db.sessionmaker() as session:
        found = await imo_repository.round_pauses(session, [round_id], per_round=10)
    return found[round_id][::-1]


def _batches(round_id: int) -> Any:
    return select(ImoInvitationBatch).where(ImoInvitationBatch.round_id == round_id)


def invitation(phone: str) -> Invitation:
    """An invitation sent to the fake by hand (callback nowhere)."""
    return Invitation(
        phone_e164=phone,
        text="Please accept",
        title="Invitation",
        action="Accept",
        recipient_name="Rahim Uddin",
        callback_url="http://127.0.0.1:9/callbacks/imo/invitations/x",
    )


class TestDeadWorker:
    async def test_a_dead_workers_batch_is_taken_over_without_a_second_request(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        phones = [invite_phone(n, 3) for n in range(7)]
        async with db.engine.begin() as connection:
            ids = await seed_patients(connection, phones)
        runner = make_runner(round_settings(db, fake_imo))
        round_id = await start_round(db, runner.settings)
        # A worker claims the batch, answers the first two, records that requests up to
        # the fourth may leave, and dies.
        async with db.sessionmaker() as session:
            claim = await imo_service.claim_batch(
                session,
                round_id,
                owner="dead",
                now=datetime.now(UTC),
                window=runner.window,
                settings=runner.settings,
            )
            await session.commit()
        assert isinstance(claim, ClaimedBatch) and len(claim.patients) == 7
        for patient in claim.patients[:4]:
            await runner.imo.invite(invitation(patient.mobile_e164))
        now = datetime.now(UTC)
        async with db.sessionmaker() as session:
            assert await imo_repository.reserve(session, claim.batch_id, "dead", ids[3], 1)
            assert None is not await imo_repository.record(
                session,
                claim.batch_id,
                "dead",
                1,
                imo_repository.BatchRecord(
                    authorizations={ids[0]: ("invited", now), ids[1]: ("invited", now)},
                    counters={"invited": 2},
                    skip_ids=[],
                ),
            )
            await session.commit()
        # Not before its lease has run out...
        assert await runner.work(round_id, asyncio.Event()) == Idle("busy")
        # ...and at once after: the lease runs out (on the database's clock, which
        # decides) without waiting for it.
        async with db.engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE imo_invitation_batches SET lease_until = now() - interval '1 ms'"
                    " WHERE id = :id"
                ),
                {"id": claim.batch_id},
            )

        assert (await runner.work(round_id, asyncio.Event())).reason == "completed"

        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)
        assert await counts(db, round_id) == {"invited": 5, "unconfirmed": 2}
        async with db.engine.connect() as connection:
            found = await authorizations(connection)
        # The two whose answers were lost with the worker: next round's candidates.
        assert set(ids) - set(found) == {ids[2], ids[3]}


class TestPacing:
    async def test_the_limiter_failing_mid_batch_puts_the_batch_back_with_its_answers(
        self, db: Database, fake_imo: FakeImo, make_runner: RunnerFactory
    ) -> None:
        phones = [invite_phone(n, 3) for n in range(30)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones)
        # 500/s: groups of 10 (20 ms of the rate), so a batch of 30 opens three.
        settings = round_settings(
            db, fake_imo, imo_rate_limit_per_second=500, imo_invitation_batch_size=30
        )
        runner = make_runner(settings)
        reserve = runner.limiter.reserve
        calls = 0

        async def failing_once(n: int, **kwargs: Any) -> float:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ConnectionError("Redis went away")
            return await reserve(n, **kwargs)

        runner.limiter.reserve = failing_once  # type: ignore[method-assign]
        round_id = await start_round(db, settings)

        assert (await runner.work(round_id, asyncio.Event())).reason == "completed"

        assert calls > 2
        assert [(p.reason, p.detail) for p in await pauses(db, round_id)] == [
            ("errors", "the shared rate limiter could not be reached")
        ]
        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)
        assert await counts(db, round_id) == {"invited": 30}


class _Limiter:
    def __init__(self, rate: float, max_chunk: int) -> None:
        self.rate_per_second, self.max_chunk = rate, max_chunk
        self.reserved: list[int] = []

    async def reserve(self, n: int, *, priority: str) -> float:
        self.reserved.append(n)
        return 0.0


class _Writer:
    failed = False


async def _not_paused() -> None:
    return None


def pacer(rate: float, patients: int) -> tuple[_Pacer, _Limiter]:
    limiter = _Limiter(rate, max_chunk=10)
    runner: Any = SimpleNamespace(
        limiter=limiter,
        clock=lambda: datetime.now(UTC),
        window=SimpleNamespace(contains=lambda moment, time_zone: True),
        paused=_not_paused,
    )
    claim: Any = SimpleNamespace(batch_id=1, time_zone="UTC")
    candidates = [Candidate(f"p-{i}", "Name", "+8801900000003", "en") for i in range(patients)]
    writer: Any = _Writer()
    return _Pacer(runner, candidates, claim, writer, asyncio.Event(), first=False), limiter


def late_by(paced: _Pacer, seconds: float) -> None:
    """As if the group's slots had begun `seconds` ago (the pacer reads the loop's clock):
    what a lane taking its patient that late finds."""
    paced._first_slot -= seconds


class TestPacer:
    """The pacer's slot rules, on a stub limiter that always grants slots from now."""

    async def test_patients_leave_in_order_in_groups_of_the_limiters_chunk(self) -> None:
        paced, limiter = pacer(rate=100_000, patients=25)
        taken = [await paced.take() for _ in range(26)]
        assert [t[0].id for t in taken if t] == [f"p-{i}" for i in range(25)]
        assert taken[-1] is None
        assert limiter.reserved == [10, 10, 5]

    async def test_a_late_group_takes_new_slots_for_its_rest(self) -> None:
        # 100/s: a slot every 10 ms; 10 ms of lateness is one slot's worth.
        paced, limiter = pacer(rate=100, patients=10)
        await paced.take()
        late_by(paced, 0.05)
        await paced.take()
        assert limiter.reserved == [10, 9]

    async def test_a_late_tail_within_10_ms_of_slots_goes_as_it_is(self) -> None:
        # 10,000/s: 10 ms are 100 slots, more than the group's rest.
        paced, limiter = pacer(rate=10_000, patients=10)
        await paced.take()
        late_by(paced, 0.05)
        for _ in range(9):
            await paced.take()
        assert limiter.reserved == [10]

    async def test_lanes_taking_at_once_each_get_one_patient(self) -> None:
        paced, _ = pacer(rate=100_000, patients=40)
        taken = await asyncio.gather(*(paced.take() for _ in range(50)))
        ids = [t[0].id for t in taken if t]
        assert sorted(ids) == sorted(f"p-{i}" for i in range(40))
        assert taken.count(None) == 10
