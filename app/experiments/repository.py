"""SQL for experiments: enrolment, eviction, stopping, and the results' aggregations.

The results are two aggregate queries over the memberships, their appointments'
notifications and the normalised delivery attempts; Python only adds the statistics.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.models import Experiment, ExperimentGroup, ExperimentMembership
from app.states import (
    EVENT_TARGET,
    REACHED_STATUSES,
    UNSENT_STATES,
    NotificationEvent,
    sql_list,
)

# One definition of "reached", for every channel: an attempt delivered or read.
_REACHED = sql_list(REACHED_STATUSES)
_UNSENT = sql_list(UNSENT_STATES)
_CLEARED = EVENT_TARGET[NotificationEvent.CANCEL]


async def create(
    session: AsyncSession, experiment: Experiment, groups: Sequence[ExperimentGroup]
) -> None:
    session.add(experiment)
    await session.flush()
    for group in groups:
        group.experiment_id = experiment.id
    session.add_all(groups)
    await session.flush()


async def get(session: AsyncSession, experiment_id: uuid.UUID) -> Experiment | None:
    return await session.get(Experiment, experiment_id)


async def get_for_update(session: AsyncSession, experiment_id: uuid.UUID) -> Experiment | None:
    return await session.scalar(
        select(Experiment)
        .where(Experiment.id == experiment_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def get_by_name(session: AsyncSession, name: str) -> Experiment | None:
    return await session.scalar(select(Experiment).where(Experiment.name == name))


async def name_taken(session: AsyncSession, name: str) -> bool:
    return (await session.scalar(select(Experiment.id).where(Experiment.name == name))) is not None


async def groups_of(
    session: AsyncSession, experiment_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[ExperimentGroup]]:
    """Each experiment's groups, control first."""
    groups: dict[uuid.UUID, list[ExperimentGroup]] = defaultdict(list)
    if not experiment_ids:
        return groups
    rows = await session.scalars(
        select(ExperimentGroup)
        .where(ExperimentGroup.experiment_id.in_(experiment_ids))
        .order_by(ExperimentGroup.experiment_id, ExperimentGroup.position)
    )
    for group in rows:
        groups[group.experiment_id].append(group)
    return groups


async def page(
    session: AsyncSession, *, limit: int, before: tuple[datetime, uuid.UUID] | None
) -> Sequence[Experiment]:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(Experiment)
    if before is not None:
        query = query.where(tuple_(Experiment.created_at, Experiment.id) < tuple_(*before))
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit)
    return (await session.scalars(query)).all()


# ---------------------------------------------------------------------------- enrolment


async def release_finished(session: AsyncSession, patient_id: str, today: date) -> None:
    """Free the patient from experiments that ended by date or were stopped, so that
    the one-running-experiment index lets them join another."""
    await session.execute(
        update(ExperimentMembership)
        .where(
            ExperimentMembership.patient_id == patient_id,
            ExperimentMembership.active,
            ExperimentMembership.experiment_id.in_(
                select(Experiment.id).where(
                    (Experiment.end_date < today) | Experiment.stopped_at.is_not(None)
                )
            ),
        )
        .values(active=False)
    )


async def running_membership(
    session: AsyncSession, patient_id: str
) -> tuple[ExperimentMembership, Experiment, ExperimentGroup] | None:
    """The patient's membership of a running experiment, row locked, if any.

    Call `release_finished` first: `active` alone does not know the date.
    """
    row = (
        await session.execute(
            select(ExperimentMembership, Experiment, ExperimentGroup)
            .join(Experiment, Experiment.id == ExperimentMembership.experiment_id)
            .join(ExperimentGroup, ExperimentGroup.id == ExperimentMembership.group_id)
            .where(ExperimentMembership.patient_id == patient_id, ExperimentMembership.active)
            .with_for_update(of=ExperimentMembership)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def membership_with_experiment(
    session: AsyncSession, membership_id: int
) -> tuple[ExperimentMembership, Experiment, ExperimentGroup] | None:
    row = (
        await session.execute(
            select(ExperimentMembership, Experiment, ExperimentGroup)
            .join(Experiment, Experiment.id == ExperimentMembership.experiment_id)
            .join(ExperimentGroup, ExperimentGroup.id == ExperimentMembership.group_id)
            .where(ExperimentMembership.id == membership_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def enrolling_experiments(
    session: AsyncSession,
    *,
    patient_id: str,
    country: str,
    facility_id: str | None,
    scheduled_date: date,
    today: date,
) -> list[Experiment]:
    """Running experiments this appointment makes the patient eligible for, oldest
    first, leaving out those the patient was ever a member of."""
    member_of = select(ExperimentMembership.experiment_id).where(
        ExperimentMembership.patient_id == patient_id
    )
    facility_ok: ColumnElement[bool] = Experiment.facility_ids.is_(None)
    if facility_id is not None:
        facility_ok = facility_ok | (Experiment.facility_ids.any_() == facility_id)
    rows = await session.scalars(
        select(Experiment)
        .where(
            Experiment.stopped_at.is_(None),
            Experiment.start_date <= today,
            Experiment.end_date >= today,
            Experiment.start_date <= scheduled_date,
            Experiment.end_date >= scheduled_date,
            Experiment.countries.is_(None) | (Experiment.countries.any_() == country),
            facility_ok,
            Experiment.id.not_in(member_of),
        )
        .order_by(Experiment.created_at, Experiment.id)
    )
    return list(rows)


_COUNT_ENROLMENT = text(
    """
    INSERT INTO experiment_enrolment_days AS d (experiment_id, day, enrolled)
    VALUES (:experiment_id, :day, 1)
    ON CONFLICT (experiment_id, day) DO UPDATE SET enrolled = d.enrolled + 1
    WHERE d.enrolled < :cap
    RETURNING d.enrolled
    """
)


async def take_enrolment_slot(
    session: AsyncSession, experiment_id: uuid.UUID, day: date, cap: int
) -> bool:
    """Count one enrolment against the day's cap; False when the cap is reached.

    The upsert locks the day's row until the transaction ends: concurrent enrolments
    from any number of processes queue on it, so the cap is never overshot, and a
    rolled-back enrolment gives its slot back.
    """
    taken = await session.scalar(
        _COUNT_ENROLMENT, {"experiment_id": experiment_id, "day": day, "cap": cap}
    )
    return taken is not None


async def insert_membership(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """The new membership's id; None if the patient is already in a running experiment
    or was in this one (the unique indexes decide, also between concurrent requests)."""
    membership_id: int | None = await session.scalar(
        insert(ExperimentMembership)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(ExperimentMembership.id)
    )
    return membership_id


async def evict(session: AsyncSession, membership_id: int, reason: str, now: datetime) -> None:
    await session.execute(
        update(ExperimentMembership)
        .where(ExperimentMembership.id == membership_id, ExperimentMembership.evicted_at.is_(None))
        .values(evicted_at=now, evicted_reason=reason)
        .execution_options(synchronize_session="fetch")
    )


_RECORD_VISIT = text(
    """
    UPDATE experiment_memberships
    SET visited_at = :visited_at, visited_on = :visited_on
    WHERE patient_id = :patient_id
      AND (visited_at IS NULL OR visited_at > :visited_at)
      AND CAST(timezone(CAST(:time_zone AS text), enrolled_at) AS date) <= :visited_on
    """
)


async def record_visit(
    session: AsyncSession,
    patient_id: str,
    time_zone: str,
    visited_at: datetime,
    visited_on: date,
) -> None:
    """Note the patient's earliest visit on each membership it follows (on or after the
    day of enrolment, in the patient's time zone)."""
    await session.execute(
        _RECORD_VISIT,
        {
            "patient_id": patient_id,
            "time_zone": time_zone,
            "visited_at": visited_at,
            "visited_on": visited_on,
        },
    )


async def stop(session: AsyncSession, experiment_id: uuid.UUID, now: datetime) -> int:
    """Mark stopped, free its members, clear the unsent reminders of its (not evicted)
    members' appointments -> how many reminders were cleared."""
    await session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.stopped_at.is_(None))
        .values(stopped_at=now, updated_at=func.now())
    )
    cleared = await session.execute(
        text(
            f"""
            UPDATE notifications AS n
            SET state = '{_CLEARED}', failure_reason = 'experiment stopped', updated_at = now()
            FROM appointments AS a
            JOIN experiment_memberships AS m ON m.id = a.membership_id
            WHERE m.experiment_id = :experiment_id AND m.evicted_at IS NULL
              AND n.appointment_id = a.id AND n.state IN ({_UNSENT})
            RETURNING n.id
            """  # noqa: S608 - constants only
        ),
        {"experiment_id": experiment_id},
    )
    count = len(cleared.all())
    # Memberships after reminders: the dispatcher's settle locks in that order too, so a
    # stop during a batch waits for it rather than deadlocking with it.
    await session.execute(
        update(ExperimentMembership)
        .where(ExperimentMembership.experiment_id == experiment_id, ExperimentMembership.active)
        .values(active=False)
    )
    return count


# ---------------------------------------------------------------------------- results


@dataclass
class GroupCounts:
    enrolled: int = 0
    evicted_by_reason: dict[str, int] | None = None
    returned: int = 0
    awaiting_outcome: int = 0
    patients_reached: int = 0
    reminders_by_state: dict[str, int] | None = None
    reminders_reached: int = 0
    attempts: dict[str, dict[str, int]] | None = None


# Per group and eviction reason: members, and those who returned within the window (by
# their first visit since enrolment) or may still do so. The members' table alone.
MEMBER_COUNTS = text(
    """
    SELECT group_id, evicted_reason,
           count(*) AS enrolled,
           count(*) FILTER (WHERE returned) AS returned,
           count(*) FILTER (WHERE returned IS NOT TRUE AND window_open) AS awaiting
    FROM (
        SELECT group_id, evicted_reason,
               visited_on <= appointment_date + CAST(:window AS int) AS returned,
               appointment_date + CAST(:window AS int) >= CAST(:today AS date) AS window_open
        FROM experiment_memberships
        WHERE experiment_id = :experiment_id
    ) AS m
    GROUP BY group_id, evicted_reason
    """
)

# Per group: reminders by state; attempts by channel and status; reminders and members
# reached (on any channel). The members' reminders and attempts are joined once.
REMINDER_COUNTS = text(
    f"""
    WITH reminders AS MATERIALIZED (
        SELECT m.group_id, m.id AS membership_id, n.id, n.state
        FROM experiment_memberships AS m
        JOIN appointments AS a ON a.membership_id = m.id
        JOIN notifications AS n ON n.appointment_id = a.id
        WHERE m.experiment_id = :experiment_id
    ), attempts AS MATERIALIZED (
        SELECT r.group_id, r.membership_id, r.id AS notification_id, d.channel, d.status
        FROM reminders AS r
        JOIN delivery_attempts AS d ON d.notification_id = r.id
    ), reached AS MATERIALIZED (
        SELECT DISTINCT group_id, membership_id, notification_id
        FROM attempts WHERE status IN ({_REACHED})
    )
    SELECT group_id, 'state' AS kind, state AS key, '' AS status, count(*) AS n
    FROM reminders GROUP BY group_id, state
    UNION ALL
    SELECT group_id, 'attempt', channel, status, count(*)
    FROM attempts GROUP BY group_id, channel, status
    UNION ALL
    SELECT group_id, 'reached', '', '', count(*) FROM reached GROUP BY group_id
    UNION ALL
    SELECT group_id, 'patients_reached', '', '', count(DISTINCT membership_id)
    FROM reached GROUP BY group_id
    """  # noqa: S608 - constants only
)


async def group_counts(
    session: AsyncSession, experiment_id: uuid.UUID, return_window_days: int, today: date
) -> dict[int, GroupCounts]:
    """Every count of the results, by group id, in two queries. Turns JIT off for the
    rest of the transaction."""
    counts: dict[int, GroupCounts] = defaultdict(
        lambda: GroupCounts(evicted_by_reason={}, reminders_by_state={}, attempts={})
    )
    # Compiling these plans took 0.3-1.7 s of a few seconds on a million members (see
    # docs/experiments.md), more than the compiled expressions ever saved.
    await session.execute(text("SET LOCAL jit = off"))
    rows = await session.execute(
        MEMBER_COUNTS,
        {"experiment_id": experiment_id, "window": return_window_days, "today": today},
    )
    for group_id, reason, enrolled, returned, awaiting in rows:
        group = counts[group_id]
        group.enrolled += enrolled
        group.returned += returned
        group.awaiting_outcome += awaiting
        if reason is not None:
            assert group.evicted_by_reason is not None
            group.evicted_by_reason[reason] = enrolled
    rows = await session.execute(REMINDER_COUNTS, {"experiment_id": experiment_id})
    for group_id, kind, key, status, n in rows:
        group = counts[group_id]
        assert group.reminders_by_state is not None and group.attempts is not None
        if kind == "state":
            group.reminders_by_state[key] = n
        elif kind == "attempt":
            group.attempts.setdefault(key, {})[status] = n
        elif kind == "reached":
            group.reminders_reached = n
        else:
            group.patients_reached = n
    return dict(counts)


@dataclass(frozen=True, slots=True)
class PatientRow:
    patient_id: str
    group: str
    enrolled_at: datetime
    appointment_id: str
    appointment_date: date
    reached: bool
    returned: bool
    days_to_return: int | None
    evicted_reason: str | None


_PATIENT_ROWS = text(
    f"""
    SELECT m.id, m.patient_id, g.name, m.enrolled_at, m.appointment_id, m.appointment_date,
           EXISTS (
               SELECT 1 FROM appointments AS a
               JOIN notifications AS n ON n.appointment_id = a.id
               JOIN delivery_attempts AS d ON d.notification_id = n.id
               WHERE a.membership_id = m.id AND d.status IN ({_REACHED})
           ) AS reached,
           coalesce(m.visited_on <= m.appointment_date + CAST(:window AS int), false) AS returned,
           m.visited_on - m.appointment_date AS days_to_return,
           m.evicted_reason
    FROM experiment_memberships AS m
    JOIN experiment_groups AS g ON g.id = m.group_id
    WHERE m.experiment_id = :experiment_id AND m.id > :after
    ORDER BY m.id
    LIMIT :limit
    """  # noqa: S608 - constants only
)


async def patient_rows(
    session: AsyncSession,
    experiment_id: uuid.UUID,
    return_window_days: int,
    *,
    batch: int = 10_000,
) -> AsyncIterator[PatientRow]:
    """Every member, one row each, in enrolment order; keyset-paginated in batches."""
    after = 0
    while True:
        rows = (
            await session.execute(
                _PATIENT_ROWS,
                {
                    "experiment_id": experiment_id,
                    "window": return_window_days,
                    "after": after,
                    "limit": batch,
                },
            )
        ).all()
        for row in rows:
            yield PatientRow(*row[1:])
        if len(rows) < batch:
            return
        after = rows[-1][0]
