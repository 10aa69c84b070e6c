"""Experiment rules: creating and stopping, enrolling patients, evicting them, results.

- Enrolment happens when an appointment is registered (its first PUT) while an
  experiment runs and the patient is eligible: the experiment's countries and
  facilities, the appointment scheduled within the experiment's dates, reminder consent
  and a mobile number (so that every group could be reached; decided before assignment,
  hence the same for every group). Up to the daily cap; the first eligible experiment
  (oldest first) with room takes the patient.
- The group follows from a hash of experiment and patient (`assignment`), so it never
  changes, and the membership row is kept anyway.
- A member's appointments get the group's plan (control: none) while the experiment
  runs, unless the member was evicted: then the default plan.
- Results are intention to treat: every enrolled patient is in the denominator,
  evicted ones included and counted apart, so an eviction can never silently change the
  comparison (reminders failing is itself an effect of the treatment).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.db.session import unique_violation
from app.errors import Conflict, NotFound, field_error
from app.experiments import assignment, stats
from app.experiments import repository as experiment_repository
from app.experiments.repository import GroupCounts
from app.experiments.schemas import (
    ChannelCounts,
    ExperimentIn,
    ExperimentOut,
    ExperimentResults,
    GroupResult,
    Methods,
    VersusControl,
)
from app.models import Appointment, Experiment, ExperimentGroup, ExperimentMembership, Patient
from app.models.experiment_membership import EvictionReason
from app.reminder_plans import repository as plan_repository
from app.states import REACHED_STATUSES


def utc_today(now: datetime) -> date:
    return now.astimezone(UTC).date()


# ---------------------------------------------------------------------------- CRUD


async def create(
    session: AsyncSession, request: ExperimentIn, *, now: datetime | None = None
) -> tuple[Experiment, list[ExperimentGroup]]:
    """Raises InvalidInput (an end date passed, an unknown plan), Conflict (name taken)."""
    now = now or datetime.now(UTC)
    today = utc_today(now)
    if request.end_date < today:
        raise field_error("end_date", f"{request.end_date} has passed already")
    plans = [g.reminder_plan for g in request.groups if g.reminder_plan is not None]
    known = await plan_repository.existing_names(session, plans)
    for index, group in enumerate(request.groups):
        if group.reminder_plan is not None and group.reminder_plan not in known:
            raise field_error(
                f"groups[{index}].reminder_plan", f"no reminder plan '{group.reminder_plan}'"
            )
    if await experiment_repository.name_taken(session, request.name):
        raise Conflict(f"an experiment named '{request.name}' exists already")
    experiment = Experiment(
        id=uuid.uuid4(),
        name=request.name,
        start_date=request.start_date,
        end_date=request.end_date,
        max_patients_per_day=request.max_patients_per_day,
        countries=request.eligibility.countries,
        facility_ids=request.eligibility.facility_ids,
        return_window_days=request.return_window_days,
        # The moment itself, not the transaction's start: lists are ordered by it.
        created_at=now,
    )
    groups = [
        ExperimentGroup(
            position=position, name=g.name, weight=g.weight, reminder_plan=g.reminder_plan
        )
        for position, g in enumerate(request.groups)
    ]
    try:
        # Two requests with one name racing: the unique constraint picks the winner.
        async with session.begin_nested():
            await experiment_repository.create(session, experiment, groups)
    except IntegrityError as exc:
        if not unique_violation(exc):
            raise
        raise Conflict(f"an experiment named '{request.name}' exists already") from exc
    return experiment, groups


async def get(
    session: AsyncSession, experiment_id: uuid.UUID
) -> tuple[Experiment, list[ExperimentGroup]]:
    """Raises NotFound."""
    experiment = await experiment_repository.get(session, experiment_id)
    if experiment is None:
        raise NotFound(f"no experiment '{experiment_id}'")
    groups = await experiment_repository.groups_of(session, [experiment_id])
    return experiment, groups[experiment_id]


@dataclass(frozen=True, slots=True)
class ExperimentPage:
    experiments: list[tuple[Experiment, list[ExperimentGroup]]]
    next_cursor: str | None


async def list_experiments(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> ExperimentPage:
    """Newest first. Raises InvalidInput for a bad cursor."""
    before = pagination.decode(cursor, datetime, uuid.UUID) if cursor else None
    rows = await experiment_repository.page(session, limit=limit + 1, before=before)
    page, next_cursor = pagination.split(rows, limit, lambda e: (e.created_at, e.id))
    groups = await experiment_repository.groups_of(session, [e.id for e in page])
    return ExperimentPage([(e, groups[e.id]) for e in page], next_cursor)


async def stop(
    session: AsyncSession, experiment_id: uuid.UUID, *, now: datetime | None = None
) -> tuple[Experiment, list[ExperimentGroup]]:
    """Stop the experiment early: no more enrolments, its members are free, and the
    unsent reminders of its members' appointments are cleared. Idempotent (a stopped
    experiment stays stopped at its first stop). Raises NotFound."""
    now = now or datetime.now(UTC)
    experiment = await experiment_repository.get_for_update(session, experiment_id)
    if experiment is None:
        raise NotFound(f"no experiment '{experiment_id}'")
    if experiment.stopped_at is None:
        await experiment_repository.stop(session, experiment_id, now)
    return await get(session, experiment_id)


# ---------------------------------------------------------------------------- enrolment


@dataclass(frozen=True, slots=True)
class PlanChoice:
    """Where an appointment's reminders come from."""

    # The plan to schedule from; None: no reminders.
    plan_name: str | None
    # The patient's membership of a running experiment, if any (evicted or not).
    membership: ExperimentMembership | None
    experiment: Experiment | None = None
    group: ExperimentGroup | None = None


async def choose_plan(
    session: AsyncSession,
    patient: Patient,
    appointment: Appointment,
    *,
    registering: bool,
    now: datetime,
) -> PlanChoice:
    """The plan for the appointment as it now stands; enrols the patient when the
    appointment is being registered, and evicts when the enrolling appointment moved out
    of the experiment's dates. Flushes."""
    today = utc_today(now)
    await experiment_repository.release_finished(session, patient.id, today)
    found = await experiment_repository.running_membership(session, patient.id)
    if found is None and registering:
        found = await _enrol(session, patient, appointment, now)
    if found is None:
        return PlanChoice(await _default_plan(session), None)
    membership, experiment, group = found
    if membership.appointment_id == appointment.id and membership.evicted_at is None:
        if experiment.start_date <= appointment.scheduled_date <= experiment.end_date:
            membership.appointment_date = appointment.scheduled_date
        else:
            await evict(session, membership, EvictionReason.OUT_OF_RANGE, now)
    if membership.evicted_at is not None:
        return PlanChoice(await _default_plan(session), membership, experiment, group)
    return PlanChoice(group.reminder_plan, membership, experiment, group)


async def _default_plan(session: AsyncSession) -> str | None:
    plan = await plan_repository.get_default(session)
    return plan.name if plan is not None else None


def eligible_patient(patient: Patient) -> bool:
    """Only patients every group could message are enrolled."""
    return patient.reminder_consent == "granted" and patient.mobile_e164 is not None


async def _enrol(
    session: AsyncSession, patient: Patient, appointment: Appointment, now: datetime
) -> tuple[ExperimentMembership, Experiment, ExperimentGroup] | None:
    if not eligible_patient(patient):
        return None
    today = utc_today(now)
    experiments = await experiment_repository.enrolling_experiments(
        session,
        patient_id=patient.id,
        country=patient.country,
        facility_id=appointment.facility_id,
        scheduled_date=appointment.scheduled_date,
        today=today,
    )
    if not experiments:
        return None
    all_groups = await experiment_repository.groups_of(session, [e.id for e in experiments])
    for experiment in experiments:
        groups = all_groups[experiment.id]
        group = groups[assignment.assign(experiment.id, patient.id, [g.weight for g in groups])]
        async with session.begin_nested() as savepoint:
            membership_id = None
            cap = experiment.max_patients_per_day
            if cap is None or await experiment_repository.take_enrolment_slot(
                session, experiment.id, today, cap
            ):
                membership_id = await experiment_repository.insert_membership(
                    session,
                    {
                        "experiment_id": experiment.id,
                        "group_id": group.id,
                        "patient_id": patient.id,
                        "appointment_id": appointment.id,
                        "appointment_date": appointment.scheduled_date,
                        "enrolled_at": now,
                        "active": True,
                    },
                )
            if membership_id is None:
                # No room today, or another request enrolled the patient meanwhile.
                await savepoint.rollback()
        if membership_id is not None:
            return await experiment_repository.running_membership(session, patient.id)
        raced = await experiment_repository.running_membership(session, patient.id)
        if raced is not None:
            return raced
    return None


async def evict(
    session: AsyncSession, membership: ExperimentMembership, reason: str, now: datetime
) -> None:
    """Record that the member left the experiment's protocol; it stays counted."""
    if membership.evicted_at is None:
        await experiment_repository.evict(session, membership.id, reason, now)
        membership.evicted_at = now
        membership.evicted_reason = reason


async def record_visit(
    session: AsyncSession, patient: Patient, visited_at: datetime, visited_on: date
) -> None:
    await experiment_repository.record_visit(
        session, patient.id, patient.time_zone, visited_at, visited_on
    )


# ---------------------------------------------------------------------------- results

METHODS = Methods(
    population="intention to treat: every enrolled patient, evicted ones included",
    reached="a delivery attempt whose normalised status is "
    + " or ".join(sorted(REACHED_STATUSES))
    + ", on any channel (an Imo read and an SMS delivered count alike)",
    returned="a visit recorded since enrolment, by the appointment date plus "
    "return_window_days (in the patient's time zone)",
    return_rate_interval="Wilson score interval, 95%",
    difference_interval="Newcombe hybrid score interval (method 10), 95%",
    test="two-sided two-proportion z-test with pooled variance",
)


async def results(
    session: AsyncSession, experiment_id: uuid.UUID, *, now: datetime | None = None
) -> ExperimentResults:
    """Raises NotFound."""
    now = now or datetime.now(UTC)
    experiment, groups = await get(session, experiment_id)
    counts = await experiment_repository.group_counts(
        session, experiment_id, experiment.return_window_days, utc_today(now)
    )
    return build_results(experiment, groups, counts, now)


def build_results(
    experiment: Experiment,
    groups: list[ExperimentGroup],
    counts: dict[int, GroupCounts],
    now: datetime,
) -> ExperimentResults:
    empty = GroupCounts(evicted_by_reason={}, reminders_by_state={}, attempts={})
    control = counts.get(groups[0].id, empty)
    answered = []
    for position, group in enumerate(groups):
        c = counts.get(group.id, empty)
        assert c.evicted_by_reason is not None
        assert c.reminders_by_state is not None and c.attempts is not None
        interval = stats.wilson_interval(c.returned, c.enrolled)
        versus = None
        if position > 0:
            comparison = stats.compare(c.returned, c.enrolled, control.returned, control.enrolled)
            if comparison is not None:
                versus = VersusControl(
                    difference=comparison.difference,
                    ci95=(comparison.interval.low, comparison.interval.high),
                    z=comparison.z,
                    p_value=comparison.p_value,
                )
        answered.append(
            GroupResult(
                name=group.name,
                reminder_plan=group.reminder_plan,
                weight=group.weight,
                enrolled=c.enrolled,
                evicted=sum(c.evicted_by_reason.values()),
                evicted_by_reason=c.evicted_by_reason,
                reminders=sum(c.reminders_by_state.values()),
                reminders_by_state=c.reminders_by_state,
                reminders_reached=c.reminders_reached,
                attempts_by_channel={
                    channel: ChannelCounts(
                        attempts=sum(by_status.values()),
                        reached=sum(by_status.get(s, 0) for s in REACHED_STATUSES),
                        by_status=by_status,
                    )
                    for channel, by_status in sorted(c.attempts.items())
                },
                patients_reached=c.patients_reached,
                returned=c.returned,
                awaiting_outcome=c.awaiting_outcome,
                return_rate=stats.rate(c.returned, c.enrolled),
                return_rate_ci95=None if interval is None else (interval.low, interval.high),
                versus_control=versus,
            )
        )
    return ExperimentResults(
        experiment=ExperimentOut.from_model(experiment, groups, utc_today(now)),
        computed_at=now,
        methods=METHODS,
        groups=answered,
    )
