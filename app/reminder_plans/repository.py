"""SQL for reminder plans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Experiment, ExperimentGroup, ReminderPlan


async def get(session: AsyncSession, name: str) -> ReminderPlan | None:
    return await session.scalar(select(ReminderPlan).where(ReminderPlan.name == name))


async def get_for_update(session: AsyncSession, name: str) -> ReminderPlan | None:
    return await session.scalar(
        select(ReminderPlan)
        .where(ReminderPlan.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def get_default(session: AsyncSession) -> ReminderPlan | None:
    return await session.scalar(select(ReminderPlan).where(ReminderPlan.is_default))


async def existing_names(session: AsyncSession, names: Sequence[str]) -> set[str]:
    rows = await session.scalars(select(ReminderPlan.name).where(ReminderPlan.name.in_(names)))
    return set(rows)


async def lock_default_changes(session: AsyncSession) -> None:
    """Serialise changes of the default plan until the transaction ends, so that two
    plans made default at once cannot both pass and then collide on the unique index."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('reminder_plans.default'))"))


async def unset_default_except(session: AsyncSession, name: str) -> None:
    await session.execute(
        update(ReminderPlan)
        .where(ReminderPlan.is_default, ReminderPlan.name != name)
        .values(is_default=False, updated_at=func.now())
    )


async def upsert(
    session: AsyncSession, name: str, reminders: list[dict[str, Any]], is_default: bool
) -> tuple[ReminderPlan, bool]:
    """Insert or replace the plan -> (plan, created)."""
    statement = (
        insert(ReminderPlan)
        .values(name=name, reminders=reminders, is_default=is_default)
        .on_conflict_do_update(
            index_elements=[ReminderPlan.name],
            set_={"reminders": reminders, "is_default": is_default, "updated_at": func.now()},
        )
        .returning(ReminderPlan, literal_column("(xmax = 0)", Boolean))
    )
    row = (await session.execute(statement, execution_options={"populate_existing": True})).one()
    return row[0], bool(row[1])


async def running_experiments_using(session: AsyncSession, name: str, today: Any) -> list[str]:
    """Names of experiments not yet over whose groups use this plan."""
    rows = await session.scalars(
        select(Experiment.name)
        .join(ExperimentGroup, ExperimentGroup.experiment_id == Experiment.id)
        .where(
            ExperimentGroup.reminder_plan == name,
            Experiment.stopped_at.is_(None),
            Experiment.end_date >= today,
        )
        .distinct()
    )
    return sorted(rows)


async def page(session: AsyncSession, *, limit: int, after: str | None) -> Sequence[ReminderPlan]:
    query = select(ReminderPlan).order_by(ReminderPlan.name).limit(limit)
    if after is not None:
        query = query.where(ReminderPlan.name > after)
    return (await session.scalars(query)).all()
