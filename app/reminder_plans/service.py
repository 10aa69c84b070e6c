"""Reminder-plan rules: templates checked when the plan is written, one default plan.

A plan's templates may use only the variables an appointment provides
(`PLAN_VARIABLES`), so that a plan that is accepted never fails to render later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.errors import Conflict, InvalidInput, NotFound, field_error
from app.models import ReminderPlan
from app.reminder_plans import repository as plan_repository
from app.reminder_plans.schemas import ReminderPlanIn
from app.templates import repository as template_repository
from app.templates.placeholders import variables_of

# What every appointment reminder can fill in.
PLAN_VARIABLES = frozenset({"patient_name", "facility_name", "appointment_date"})


@dataclass(frozen=True, slots=True)
class StoredPlan:
    plan: ReminderPlan
    created: bool


async def put_plan(
    session: AsyncSession, name: str, request: ReminderPlanIn, *, now: datetime | None = None
) -> StoredPlan:
    """Create or replace plan `name`.

    Raises InvalidInput for an unknown template, a template needing other variables,
    or unsetting the default; Conflict for changing the reminders of a plan that an
    experiment not yet over uses (its groups must stay what they were).
    """
    today = (now or datetime.now(UTC)).date()
    await _check_templates(session, request)
    reminders = [
        r.model_dump() for r in sorted(request.reminders, key=lambda r: (r.offset_days, r.template))
    ]
    await plan_repository.lock_default_changes(session)
    current = await plan_repository.get_for_update(session, name)
    if current is not None:
        if current.is_default and not request.default:
            raise field_error(
                "default",
                f"'{name}' is the default plan: make another plan the default instead",
            )
        if current.reminders != reminders:
            users = await plan_repository.running_experiments_using(session, name, today)
            if users:
                raise Conflict(
                    f"plan '{name}' is used by experiment(s) {', '.join(users)}: "
                    "its reminders cannot change until they end; create a new plan"
                )
    if request.default:
        await plan_repository.unset_default_except(session, name)
    plan, created = await plan_repository.upsert(session, name, reminders, request.default)
    return StoredPlan(plan, created)


async def _check_templates(session: AsyncSession, request: ReminderPlanIn) -> None:
    keys = {r.template for r in request.reminders}
    if not keys:
        return
    templates = await template_repository.with_keys(session, keys)
    problems: dict[str, str] = {}
    found = {t.key for t in templates}
    for key in keys - found:
        problems[key] = f"no template '{key}'"
    for template in templates:
        try:
            needed = variables_of(template.body) | variables_of(template.title)
        except ValueError as exc:
            problems[template.key] = f"template '{template.key}' ({template.locale}): {exc}"
            continue
        unknown = sorted(needed - PLAN_VARIABLES)
        if unknown:
            problems[template.key] = (
                f"template '{template.key}' ({template.locale}) needs {', '.join(unknown)}; "
                f"an appointment provides only {', '.join(sorted(PLAN_VARIABLES))}"
            )
    if problems:
        details = [
            {"field": f"reminders[{i}].template", "message": problems[r.template]}
            for i, r in enumerate(request.reminders)
            if r.template in problems
        ]
        raise InvalidInput(details[0]["message"], details=details)


async def get_plan(session: AsyncSession, name: str) -> ReminderPlan:
    plan = await plan_repository.get(session, name)
    if plan is None:
        raise NotFound(f"no reminder plan '{name}'")
    return plan


@dataclass(frozen=True, slots=True)
class PlanPage:
    plans: Sequence[ReminderPlan]
    next_cursor: str | None


async def list_plans(session: AsyncSession, *, limit: int, cursor: str | None) -> PlanPage:
    """Plans by name, keyset-paginated. Raises InvalidInput for a bad cursor."""
    after = pagination.decode(cursor, str)[0] if cursor else None
    rows = await plan_repository.page(session, limit=limit + 1, after=after)
    plans, next_cursor = pagination.split(rows, limit, lambda plan: (plan.name,))
    return PlanPage(plans, next_cursor)
