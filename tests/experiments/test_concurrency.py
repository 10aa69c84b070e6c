"""Enrolment under concurrency, on real connections that commit (and are cleaned up):
the daily cap and the one-running-experiment rule hold across processes' transactions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.appointments import service as appointment_service
from app.appointments.schemas import AppointmentIn
from app.config import Settings
from app.experiments import service as experiment_service
from app.experiments.schemas import ExperimentIn
from app.models import Appointment, Experiment, ExperimentMembership, Patient
from tests.factories import make_patient, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Committing:
    """Sessions that really commit, and what the test made with them."""

    maker: async_sessionmaker[AsyncSession]
    experiments: list[uuid.UUID] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


@pytest_asyncio.fixture(loop_scope="session")
async def committing(engine: AsyncEngine) -> AsyncIterator[Committing]:
    """Committing sessions; what the test made is deleted afterwards (cascading)."""
    made = Committing(async_sessionmaker(engine, expire_on_commit=False))
    try:
        yield made
    finally:
        async with made.maker() as session:
            await session.execute(delete(Experiment).where(Experiment.id.in_(made.experiments)))
            await session.execute(delete(Patient).where(Patient.id.in_(made.patients)))
            await session.commit()


def experiment_request(**overrides: object) -> ExperimentIn:
    today = datetime.now(UTC).date()
    values: dict[str, object] = {
        "name": unique_id("race"),
        "start_date": today - timedelta(days=1),
        "end_date": today + timedelta(days=30),
        "groups": [
            {"name": "control", "weight": 1, "reminder_plan": None},
            {"name": "other", "weight": 1, "reminder_plan": None},
        ],
        **overrides,
    }
    return ExperimentIn.model_validate(values)


async def setup(
    committing: Committing, experiments: list[ExperimentIn], patients: int
) -> tuple[list[uuid.UUID], list[str]]:
    async with committing.maker() as session:
        experiment_ids = []
        for request in experiments:
            experiment, _ = await experiment_service.create(session, request)
            experiment_ids.append(experiment.id)
        patient_ids = [(await make_patient(session)).id for _ in range(patients)]
        await session.commit()
    committing.experiments += experiment_ids
    committing.patients += patient_ids
    return experiment_ids, patient_ids


async def register(
    maker: async_sessionmaker[AsyncSession], patient_id: str, days_ahead: int = 3
) -> None:
    async with maker() as session:
        await appointment_service.put_appointment(
            session,
            unique_id("a"),
            AppointmentIn(
                patient_id=patient_id,
                scheduled_date=datetime.now(UTC).date() + timedelta(days=days_ahead),
            ),
            Settings(),
        )
        await session.commit()


class TestConcurrentEnrolment:
    async def test_the_daily_cap_holds_under_concurrent_registrations(
        self, committing: Committing
    ) -> None:
        [experiment_id], patients = await setup(
            committing, [experiment_request(max_patients_per_day=5)], 20
        )
        await asyncio.gather(*(register(committing.maker, p) for p in patients))
        async with committing.maker() as session:
            enrolled = await session.scalar(
                select(func.count()).where(ExperimentMembership.experiment_id == experiment_id)
            )
            appointments = await session.scalar(
                select(func.count()).where(Appointment.patient_id.in_(patients))
            )
        assert (enrolled, appointments) == (5, 20)

    async def test_one_patient_registering_twice_at_once_joins_one_experiment(
        self, committing: Committing
    ) -> None:
        experiment_ids, [patient] = await setup(
            committing, [experiment_request(), experiment_request()], 1
        )
        await asyncio.gather(*(register(committing.maker, patient, d) for d in (2, 3, 4, 5)))
        async with committing.maker() as session:
            rows = (
                await session.execute(
                    select(ExperimentMembership.experiment_id, ExperimentMembership.active).where(
                        ExperimentMembership.patient_id == patient
                    )
                )
            ).all()
            linked = await session.scalar(
                select(func.count(func.distinct(Appointment.membership_id))).where(
                    Appointment.patient_id == patient
                )
            )
        assert rows == [(experiment_ids[0], True)]
        assert linked == 1
