"""HTTP for reminder plans."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from app.db.session import DbSession
from app.pagination import Cursor, Limit
from app.reminder_plans import service as plan_service
from app.reminder_plans.schemas import (
    PLAN_NAME_PATTERN,
    ReminderPlanIn,
    ReminderPlanOut,
    ReminderPlanPage,
)

router = APIRouter(prefix="/reminder-plans", tags=["reminder plans"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}

PlanName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=PLAN_NAME_PATTERN,
        description="Lower-case letters, digits and `_.-`",
        examples=["cascade"],
    ),
]


@router.put(
    "/{name}",
    summary="Create or replace a reminder plan",
    description="Reminders are offsets in days from an appointment's `scheduled_date`, "
    "each with a template. A plan takes effect for appointments sent from now on (and "
    "re-sent with a change). `default: true` makes it the plan of every appointment "
    "whose patient is in no running experiment; there is at most one default, and once "
    "there is one it can only be moved to another plan. 200 when an existing plan was "
    "replaced, 201 when it was created.",
    responses={
        **_ERRORS,
        200: {"description": "Replaced an existing plan"},
        201: {"model": ReminderPlanOut, "description": "Created a new plan"},
        409: {"description": "The plan's reminders are in use by an experiment not yet over"},
        422: {"description": "A malformed body, an unknown template, or unsetting the default"},
    },
)
async def upsert_reminder_plan(
    name: PlanName, body: ReminderPlanIn, response: Response, session: DbSession
) -> ReminderPlanOut:
    stored = await plan_service.put_plan(session, name, body)
    response.status_code = status.HTTP_201_CREATED if stored.created else status.HTTP_200_OK
    return ReminderPlanOut.from_model(stored.plan)


@router.get("/{name}", summary="One reminder plan", responses={**_ERRORS, 404: {}})
async def get_reminder_plan(name: PlanName, session: DbSession) -> ReminderPlanOut:
    return ReminderPlanOut.from_model(await plan_service.get_plan(session, name))


@router.get("", summary="Every reminder plan, by name", responses=_ERRORS)
async def list_reminder_plans(
    session: DbSession,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> ReminderPlanPage:
    page = await plan_service.list_plans(session, limit=limit, cursor=cursor)
    return ReminderPlanPage(
        items=[ReminderPlanOut.from_model(p) for p in page.plans], next_cursor=page.next_cursor
    )
