"""HTTP for events and trigger rules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request, Response, status

from app.db.session import DbSession
from app.events import service as event_service
from app.events.schemas import NAME_PATTERN, EventIn, EventOut, TriggerRuleIn, TriggerRuleOut
from app.notifications import history
from app.notifications.history import HistoryFilter
from app.notifications.schemas import NotificationPage
from app.pagination import Cursor, Limit

router = APIRouter(tags=["events"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}


@router.post(
    "/events",
    status_code=status.HTTP_201_CREATED,
    summary="Record an event of the clinic system; its trigger rules schedule messages",
    description="Idempotent on `id`: the same event again answers 200 and schedules "
    "nothing new; a corrected one (same id, other fields) re-evaluates the rules whose "
    "messages are not sent yet. Rules that fail on it are listed in `rule_errors`.",
    responses={
        **_ERRORS,
        200: {"description": "The same event was recorded already: nothing changed"},
        409: {"description": "The event was voided"},
        422: {"description": "A bad body or an unknown patient"},
    },
)
async def record_event(
    body: EventIn, request: Request, response: Response, session: DbSession
) -> EventOut:
    event, changed = await event_service.record(session, body, request.app.state.settings)
    if not changed:
        response.status_code = status.HTTP_200_OK
    return EventOut.from_model(event)


@router.get(
    "/events/{event_id}",
    summary="An event with the errors of the rules that failed on it",
    responses={**_ERRORS, 404: {"description": "No such event"}},
)
async def get_event(event_id: str, session: DbSession) -> EventOut:
    return EventOut.from_model(await event_service.get(session, event_id))


@router.delete(
    "/events/{event_id}",
    summary="Void an event: its messages not sent yet end `cleared`",
    responses={**_ERRORS, 404: {"description": "No such event"}},
)
async def void_event(event_id: str, session: DbSession) -> EventOut:
    return EventOut.from_model(await event_service.void(session, event_id))


@router.get(
    "/events/{event_id}/messages",
    summary="The messages the event's trigger rules scheduled, newest first",
    description="Sent and scheduled, each with its state and channel; filter by state, "
    "purpose and creation time; a page at a time to the very first.",
    responses={
        **_ERRORS,
        404: {"description": "No such event"},
        422: {"description": "A bad filter, limit or cursor"},
    },
)
async def list_event_messages(
    event_id: str,
    where: HistoryFilter,
    session: DbSession,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    await event_service.get(session, event_id)
    return await history.page(
        session, history.of_event(where, event_id), limit=limit, cursor=cursor
    )


@router.put(
    "/trigger-rules/{name}",
    summary="Create or replace a trigger rule",
    description="`condition` and each of `parameters` are CEL expressions over `event` "
    "(`id`, `type`, `patient_id`, `staff_id`, `occurred_at`, `data`) and `patient` "
    "(`id`, `full_name`, `country`, `locale`, `time_zone`, `facility_id`, "
    "`facility_name`, `attributes`, `tags`). Checked on saving: a 422 names the "
    "expression, line and column that do not compile, an unknown template or a template "
    "variable no parameter fills.",
    responses={**_ERRORS, 422: {"description": "A bad expression, template or variable"}},
)
async def upsert_trigger_rule(
    name: str = Path(pattern=NAME_PATTERN), *, body: TriggerRuleIn, session: DbSession
) -> TriggerRuleOut:
    return TriggerRuleOut.from_model(await event_service.put_rule(session, name, body))


@router.get(
    "/trigger-rules/{name}",
    summary="A trigger rule",
    responses={**_ERRORS, 404: {"description": "No such trigger rule"}},
)
async def get_trigger_rule(name: str, session: DbSession) -> TriggerRuleOut:
    return TriggerRuleOut.from_model(await event_service.get_rule(session, name))
