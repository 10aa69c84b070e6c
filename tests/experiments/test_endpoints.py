"""Experiments through the API: creating, enrolling, evicting, stopping, results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.delivery import repository as delivery_repository
from app.delivery.types import Outcome
from app.experiments import repository as experiment_repository
from app.experiments.assignment import assign
from app.models import ExperimentMembership, Notification, Patient
from app.states import NotificationState
from tests.appointments.helpers import (
    create_experiment,
    days,
    experiment_body,
    put_appointment,
    put_plan,
)
from tests.clock import daytime_zone
from tests.factories import make_patient, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def patient_in_group(
    session: AsyncSession, experiment: dict[str, Any], group: int, **overrides: Any
) -> Patient:
    """A new patient whose hash puts them in group `group` of `experiment`."""
    weights = [g["weight"] for g in experiment["groups"]]
    experiment_id = uuid.UUID(experiment["id"])
    while True:
        patient_id = unique_id()
        if assign(experiment_id, patient_id, weights) == group:
            return await make_patient(session, id=patient_id, time_zone=daytime_zone(), **overrides)


async def settle_failed(session: AsyncSession, reminder: uuid.UUID) -> None:
    """The dispatcher's write when a reminder failed on every channel."""
    await session.execute(
        update(Notification).where(Notification.id == reminder).values(state="sending")
    )
    await delivery_repository.settle(
        session,
        {reminder: Outcome(NotificationState.FAILED, ["sms"], 0, failure_reason="sms: x")},
    )


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent on the engine's connections meanwhile."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def membership(session: AsyncSession, patient_id: str) -> ExperimentMembership | None:
    return await session.scalar(
        select(ExperimentMembership)
        .where(ExperimentMembership.patient_id == patient_id)
        .execution_options(populate_existing=True)
    )


class TestCreate:
    async def test_create_read_list(self, api: httpx.AsyncClient) -> None:
        plan = await put_plan(api)
        created = await create_experiment(api, plan, max_patients_per_day=10)
        assert created["status"] == "running"
        assert [g["name"] for g in created["groups"]] == ["control", "g1"]
        assert created["groups"][1]["reminder_plan"] == plan
        assert created["eligibility"] == {"countries": ["BD"], "facility_ids": None}
        got = (await api.get(f"/v1/experiments/{created['id']}")).json()
        assert got == created
        listed = (await api.get("/v1/experiments", params={"limit": 1})).json()
        assert listed["items"] == [created]

    async def test_list_pages_newest_first(self, api: httpx.AsyncClient) -> None:
        ids = [(await create_experiment(api))["id"] for _ in range(3)]
        first = (await api.get("/v1/experiments", params={"limit": 2})).json()
        rest = (
            await api.get("/v1/experiments", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        seen = [e["id"] for e in first["items"] + rest["items"]]
        assert seen[:3] == list(reversed(ids))

    async def test_future_experiment_is_scheduled(self, api: httpx.AsyncClient) -> None:
        created = await create_experiment(api, start_date=days(5), end_date=days(9))
        assert created["status"] == "scheduled"

    async def test_a_taken_name_is_409(self, api: httpx.AsyncClient) -> None:
        created = await create_experiment(api)
        answer = await api.post("/v1/experiments", json=experiment_body(name=created["name"]))
        assert answer.status_code == 409

    async def test_a_name_taken_by_a_racing_request_is_409_not_500(
        self, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Found auditing issue 11: eight identical creates at once were one 201 and
        # seven 500s (the unique constraint, after each had checked the name was free).
        created = await create_experiment(api)

        async def free(*_: object) -> bool:
            return False  # as a racing request, which checked before the first committed

        monkeypatch.setattr(experiment_repository, "name_taken", free)
        answer = await api.post("/v1/experiments", json=experiment_body(name=created["name"]))
        assert answer.status_code == 409, answer.text
        assert (await api.get(f"/v1/experiments/{created['id']}")).status_code == 200

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"start_date": days(5), "end_date": days(4)}, "end_date"),
            ({"start_date": days(-9), "end_date": days(-1)}, "end_date"),
            ({"start_date": "2027-02-30"}, "start_date"),
            ({"max_patients_per_day": 0}, "max_patients_per_day"),
            ({"return_window_days": -1}, "return_window_days"),
            ({"eligibility": {"countries": ["XX"]}}, "eligibility.countries[0]"),
            ({"eligibility": {"countries": []}}, "eligibility.countries"),
            ({"groups": [{"name": "control", "weight": 1, "reminder_plan": None}]}, "groups"),
            (
                {
                    "groups": [
                        {"name": "a", "weight": 1, "reminder_plan": None},
                        {"name": "a", "weight": 1, "reminder_plan": None},
                    ]
                },
                "groups",
            ),
            (
                {
                    "groups": [
                        {"name": "a", "weight": 1, "reminder_plan": None},
                        {"name": "b", "weight": 0, "reminder_plan": None},
                    ]
                },
                "groups[1].weight",
            ),
            (
                {
                    "groups": [
                        {"name": "a", "weight": 1, "reminder_plan": "no-such-plan"},
                        {"name": "b", "weight": 1, "reminder_plan": None},
                    ]
                },
                "groups",
            ),
            (
                {
                    "groups": [
                        {"name": "a", "weight": 1, "reminder_plan": None},
                        {"name": "b", "weight": 1, "reminder_plan": "no-such-plan"},
                    ]
                },
                "groups[1].reminder_plan",
            ),
            ({"name": "has space"}, "name"),
            ({"surprise": 1}, "surprise"),
        ],
    )
    async def test_bad_experiments_are_422_naming_the_field(
        self, api: httpx.AsyncClient, overrides: dict[str, Any], field: str
    ) -> None:
        answer = await api.post("/v1/experiments", json=experiment_body(**overrides))
        assert answer.status_code == 422, answer.text
        assert field in {d["field"] for d in answer.json()["error"]["details"]}, answer.json()

    async def test_unknown_experiment_is_404(self, api: httpx.AsyncClient) -> None:
        missing = uuid.uuid4()
        for path in (f"/v1/experiments/{missing}", f"/v1/experiments/{missing}/results"):
            assert (await api.get(path)).status_code == 404
        assert (await api.post(f"/v1/experiments/{missing}/stop")).status_code == 404
        assert (await api.get("/v1/experiments/not-a-uuid")).status_code == 422


class TestEnrolment:
    async def test_treatment_gets_its_plan_control_gets_none(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        default = await put_plan(api, default=True)
        plan = await put_plan(api)
        experiment = await create_experiment(api, plan)
        control = await patient_in_group(db_session, experiment, 0)
        treated = await patient_in_group(db_session, experiment, 1)

        none = await put_appointment(api, control.id, days(3))
        assert none["reminder_plan"] is None and none["reminders"] == []
        assert none["experiment"]["group"] == "control"
        assert none["experiment"]["enrolled_by_this_appointment"] is True
        assert "control group" in none["reminders_note"]
        assert experiment["name"] in none["reminders_note"]

        some = await put_appointment(api, treated.id, days(3))
        assert some["reminder_plan"] == plan and len(some["reminders"]) == 3
        assert some["experiment"]["group"] == "g1"
        assert some["experiment"]["id"] == experiment["id"]
        assert some["reminders_note"] is None

        # A second appointment of a member follows the group too, enrolled or not.
        later = await put_appointment(api, control.id, days(9))
        assert later["reminder_plan"] is None and later["reminders"] == []
        assert later["experiment"]["enrolled_by_this_appointment"] is False
        assert default

    async def test_a_resent_appointment_never_changes_group(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        plan = await put_plan(api)
        experiment = await create_experiment(api, plan, plan)
        patients = [await make_patient(db_session, time_zone=daytime_zone()) for _ in range(12)]
        first = {p.id: await put_appointment(api, p.id, days(3)) for p in patients}
        for p in patients:
            again = await put_appointment(
                api, p.id, days(4), appointment_id=first[p.id]["id"], expect=200
            )
            assert again["experiment"]["group"] == first[p.id]["experiment"]["group"]
            expected = assign(uuid.UUID(experiment["id"]), p.id, [1, 1, 1])
            assert again["experiment"]["group"] == ["control", "g1", "g2"][expected]
            found = await membership(db_session, p.id)
            assert found is not None and found.appointment_date.isoformat() == days(4)

    async def test_the_daily_cap_stops_enrolment(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        default = await put_plan(api, default=True)
        await create_experiment(api, await put_plan(api), max_patients_per_day=2)
        answers = []
        for _ in range(4):
            patient = await make_patient(db_session, time_zone=daytime_zone())
            answers.append(await put_appointment(api, patient.id, days(3)))
        assert [a["experiment"] is not None for a in answers] == [True, True, False, False]
        assert {a["reminder_plan"] for a in answers[2:]} == {default}

    @pytest.mark.parametrize(
        ("patient", "appointment", "experiment"),
        [
            ({"country": "IN"}, {}, {}),
            ({}, {"facility": {"id": "f-other", "name": "Other"}}, {"facility_ids": ["f-12"]}),
            ({"reminder_consent": "denied"}, {}, {}),
            ({"mobile_e164": None, "phone_numbers": []}, {}, {}),
            ({}, {"scheduled_date": days(45)}, {}),
        ],
    )
    async def test_ineligible_patients_are_not_enrolled(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        patient: dict[str, Any],
        appointment: dict[str, Any],
        experiment: dict[str, Any],
    ) -> None:
        eligibility = {"countries": ["BD"], "facility_ids": experiment.get("facility_ids")}
        await create_experiment(api, await put_plan(api), eligibility=eligibility)
        stored = await make_patient(db_session, time_zone=daytime_zone(), **patient)
        body = {"scheduled_date": days(3), **appointment}
        answer = await put_appointment(api, stored.id, **body)
        assert answer["experiment"] is None
        # The eligible counterpart is enrolled.
        control = await make_patient(db_session, time_zone=daytime_zone())
        assert (await put_appointment(api, control.id, days(3)))["experiment"] is not None

    async def test_an_experiment_not_running_enrols_nobody(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await create_experiment(api, start_date=days(2), end_date=days(10))
        patient = await make_patient(db_session, time_zone=daytime_zone())
        assert (await put_appointment(api, patient.id, days(3)))["experiment"] is None

    async def test_a_patient_is_in_one_running_experiment_at_most(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        first = await create_experiment(api, await put_plan(api))
        second = await create_experiment(api, await put_plan(api))
        patient = await make_patient(db_session, time_zone=daytime_zone())
        a = await put_appointment(api, patient.id, days(3))
        b = await put_appointment(api, patient.id, days(5))
        assert a["experiment"]["id"] == b["experiment"]["id"] == first["id"]
        found = await membership(db_session, patient.id)
        assert found is not None
        # The database refuses a second running membership whatever the code does.
        with pytest.raises(IntegrityError):
            async with db_session.begin_nested():
                db_session.add(
                    ExperimentMembership(
                        experiment_id=uuid.UUID(second["id"]),
                        group_id=found.group_id,
                        patient_id=patient.id,
                        appointment_id="x",
                        appointment_date=found.appointment_date,
                        active=True,
                    )
                )
        # Once the first is stopped, the patient may join the second.
        await api.post(f"/v1/experiments/{first['id']}/stop")
        c = await put_appointment(api, patient.id, days(7))
        assert c["experiment"]["id"] == second["id"]


class TestEviction:
    async def test_moving_the_appointment_out_of_range_evicts_to_the_default_plan(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        default = await put_plan(api, default=True)
        experiment = await create_experiment(api, end_date=days(10))
        patient = await patient_in_group(db_session, experiment, 0)
        first = await put_appointment(api, patient.id, days(3))
        assert first["reminders"] == []
        moved = await put_appointment(api, patient.id, days(20), appointment_id=first["id"])
        assert moved["experiment"]["evicted_reason"] == "appointment_out_of_range"
        assert moved["reminder_plan"] == default and len(moved["reminders"]) == 3
        found = await membership(db_session, patient.id)
        assert found is not None and found.evicted_at is not None
        # Its date stays the last one in range: the outcome is measured from there.
        assert found.appointment_date.isoformat() == days(3)

    async def test_cancelling_the_enrolling_appointment_evicts(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        experiment = await create_experiment(api, await put_plan(api))
        patient = await patient_in_group(db_session, experiment, 1)
        data = await put_appointment(api, patient.id, days(3))
        cancelled = (await api.post(f"/v1/appointments/{data['id']}/cancel")).json()
        assert cancelled["experiment"]["evicted_reason"] == "appointment_cancelled"
        assert {r["state"] for r in cancelled["reminders"]} == {"cleared"}

    async def test_a_reminder_failing_on_every_channel_evicts_as_undeliverable(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        experiment = await create_experiment(api, await put_plan(api))
        patient = await patient_in_group(db_session, experiment, 1)
        data = await put_appointment(api, patient.id, days(1))
        reminder = uuid.UUID(data["reminders"][0]["id"])
        await settle_failed(db_session, reminder)
        found = await membership(db_session, patient.id)
        assert found is not None and found.evicted_reason == "undeliverable"
        results = (await api.get(f"/v1/experiments/{experiment['id']}/results")).json()
        treated = results["groups"][1]
        assert (treated["enrolled"], treated["evicted"]) == (1, 1)
        assert treated["evicted_by_reason"] == {"undeliverable": 1}

    async def test_settling_a_batch_evicts_in_the_same_one_statement(
        self, api: httpx.AsyncClient, db_session: AsyncSession, engine: AsyncEngine
    ) -> None:
        # The dispatch hot path pays nothing for experiments: no statement of its own,
        # and only failed reminders of members are touched.
        plan = await put_plan(api, default=True)
        experiment = await create_experiment(api, plan)
        member = await patient_in_group(db_session, experiment, 1)
        evicted_before = await patient_in_group(db_session, experiment, 1)
        outsider = await make_patient(db_session, time_zone=daytime_zone(), country="NP")
        failed, delivered, already, not_member = [
            (await put_appointment(api, patient.id, days(1)))["reminders"][0]["id"]
            for patient in (member, member, evicted_before, outsider)
        ]
        first = await membership(db_session, evicted_before.id)
        assert first is not None
        await db_session.execute(
            update(ExperimentMembership)
            .where(ExperimentMembership.id == first.id)
            .values(evicted_at=datetime.now(UTC), evicted_reason="appointment_cancelled")
        )
        outcomes = {
            uuid.UUID(failed): Outcome(NotificationState.FAILED, ["sms"], failure_reason="x"),
            uuid.UUID(delivered): Outcome(NotificationState.DELIVERED, ["sms"]),
            uuid.UUID(already): Outcome(NotificationState.FAILED, ["sms"], failure_reason="x"),
            uuid.UUID(not_member): Outcome(NotificationState.FAILED, ["sms"], failure_reason="x"),
        }
        await db_session.execute(
            update(Notification).where(Notification.id.in_(list(outcomes))).values(state="sending")
        )

        with count_statements(engine) as statements:
            await delivery_repository.settle(db_session, outcomes)

        assert len(statements) == 1
        found = await membership(db_session, member.id)
        assert found is not None and found.evicted_reason == "undeliverable"
        kept = await membership(db_session, evicted_before.id)
        assert kept is not None and kept.evicted_reason == "appointment_cancelled"
        assert await membership(db_session, outsider.id) is None


class TestStop:
    async def test_stop_clears_members_unsent_reminders_and_frees_them(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        default = await put_plan(api, default=True)
        experiment = await create_experiment(api, await put_plan(api))
        treated = await patient_in_group(db_session, experiment, 1)
        outsider = await make_patient(db_session, time_zone=daytime_zone(), country="NP")
        member = await put_appointment(api, treated.id, days(3))
        other = await put_appointment(api, outsider.id, days(3))

        for _ in range(2):
            stopped = await api.post(f"/v1/experiments/{experiment['id']}/stop")
            assert stopped.status_code == 200
            assert stopped.json()["status"] == "stopped"
        after = (await api.get(f"/v1/appointments/{member['id']}")).json()
        assert {r["state"] for r in after["reminders"]} == {"cleared"}
        assert {r["failure_reason"] for r in after["reminders"]} == {"experiment stopped"}
        untouched = (await api.get(f"/v1/appointments/{other['id']}")).json()
        assert "cleared" not in {r["state"] for r in untouched["reminders"]}
        # A former member's next appointment gets the default plan.
        later = await put_appointment(api, treated.id, days(6))
        assert later["reminder_plan"] == default and later["experiment"] is None


class TestResults:
    async def test_results_count_reminders_reach_and_returns_per_group(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        plan = await put_plan(api)
        experiment = await create_experiment(api, plan, return_window_days=5)
        control = [await patient_in_group(db_session, experiment, 0) for _ in range(2)]
        treated = [await patient_in_group(db_session, experiment, 1) for _ in range(3)]
        appointments = {}
        for patient in control + treated:
            appointments[patient.id] = await put_appointment(api, patient.id, days(1))
        # One treated patient's first reminder was read on Imo, another's delivered by SMS.
        reports = [(treated[0], "imo", "read"), (treated[1], "sms", "delivered")]
        for patient, channel, status in reports:
            reminder = uuid.UUID(appointments[patient.id]["reminders"][0]["id"])
            await db_session.execute(
                update(Notification).where(Notification.id == reminder).values(state=status)
            )
            await db_session.execute(
                delivery_repository.text(
                    "INSERT INTO delivery_attempts (notification_id, channel, status) "
                    "VALUES (:n, 'sms', 'failed'), (:n, :c, :s)"
                ),
                {"n": reminder, "c": channel, "s": status},
            )
        # One of each group came back.
        for patient in (control[0], treated[0]):
            visit = await api.post(
                f"/v1/appointments/{appointments[patient.id]['id']}/visit",
                json={"visited_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()},
            )
            assert visit.status_code == 200

        answer = await api.get(f"/v1/experiments/{experiment['id']}/results")
        assert answer.status_code == 200, answer.text
        results = answer.json()
        assert results["experiment"]["id"] == experiment["id"]
        assert "Wilson" in results["methods"]["return_rate_interval"]
        first, second = results["groups"]
        assert (first["name"], first["enrolled"], first["returned"]) == ("control", 2, 1)
        assert first["reminders"] == 0 and first["versus_control"] is None
        assert first["awaiting_outcome"] == 1
        assert (second["enrolled"], second["returned"], second["patients_reached"]) == (3, 1, 2)
        assert second["reminders"] == 9 and second["reminders_reached"] == 2
        assert second["reminders_by_state"] == {
            "read": 1,
            "delivered": 1,
            "cleared": 2,  # the visit cleared treated[0]'s other two
            "scheduled": 5,
        }
        assert second["attempts_by_channel"] == {
            "imo": {"attempts": 1, "reached": 1, "by_status": {"read": 1}},
            "sms": {"attempts": 3, "reached": 1, "by_status": {"failed": 2, "delivered": 1}},
        }
        assert second["return_rate"] == pytest.approx(1 / 3)
        low, high = second["return_rate_ci95"]
        assert low < 1 / 3 < high
        versus = second["versus_control"]
        assert versus["difference"] == pytest.approx(1 / 3 - 1 / 2)
        assert versus["ci95"][0] < versus["difference"] < versus["ci95"][1]
        assert 0 < versus["p_value"] <= 1
