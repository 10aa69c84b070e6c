"""Events and trigger rules: a rule turns an event into at most one notification.

Posting an event evaluates every active rule of its type: a rule whose condition holds
schedules (or, for an event corrected before its message went, reschedules) its one
notification for that (event, rule); one whose condition no longer holds clears it. A
rule that fails to evaluate (a missing field, a template variable left unfilled) is
recorded on the event and counted, and the other rules go on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import Conflict, InvalidInput, NotFound
from app.events import repository as event_repository
from app.events.expressions import ExpressionError, compile_expression, context_of
from app.events.schemas import EventIn, SendAt, TriggerRuleIn
from app.ids import time_ordered_uuid
from app.models import Event, Patient, StaffMember, TriggerRule
from app.notifications import service as notification_service
from app.notifications.window import MessagingWindow, zone
from app.observability import NOTIFICATIONS_SCHEDULED, TRIGGER_RULE_ERRORS
from app.states import EVENT_SOURCES, EVENT_TARGET, NotificationEvent, NotificationState
from app.templates import repository as template_repository
from app.templates import service as template_service
from app.templates.placeholders import variables_of
from app.validation import check_storable, storable_text

log = logging.getLogger(__name__)

UNSENT = tuple(EVENT_SOURCES[NotificationEvent.CANCEL])
CLEARED = EVENT_TARGET[NotificationEvent.CANCEL]
# Filled for every patient without the rule naming them (notifications' standard ones).
STANDARD_VARIABLES = frozenset({"patient_name", "facility_name"})


class RecipientError(LookupError):
    """A staff rule's event names no staff member, or one that does not exist: the
    rule's evaluation error, recorded on the event."""


# Rules ---------------------------------------------------------------------------------


async def put_rule(session: AsyncSession, name: str, rule: TriggerRuleIn) -> TriggerRule:
    """Create or replace rule `name`. Raises InvalidInput (with the line and column) for an
    expression that does not compile, an unknown template or a variable of the template
    that neither `parameters` nor the standard variables fill. Flushes."""
    errors: list[dict[str, str]] = []
    for field, source in [("condition", rule.condition)] + [
        (f"parameters.{variable}", expression) for variable, expression in rule.parameters.items()
    ]:
        try:
            compile_expression(source)
        except ExpressionError as exc:
            errors.append({"field": field, "message": str(exc)})
    templates = await template_repository.with_keys(session, [rule.template])
    if not templates:
        errors.append({"field": "template", "message": f"no template '{rule.template}'"})
    filled = STANDARD_VARIABLES | rule.parameters.keys()
    for template in templates:
        for variable in sorted(variables_of(template.title) | variables_of(template.body)):
            if variable not in filled:
                errors.append(
                    {
                        "field": f"parameters.{variable}",
                        "message": f"template '{template.key}' ({template.locale}) uses "
                        f"{{{variable}}}: give it an expression",
                    }
                )
    if errors:
        raise InvalidInput(f"trigger rule '{name}' is not valid", details=errors)
    values = rule.model_dump(mode="json")
    return await event_repository.upsert_rule(session, name, values)


async def get_rule(session: AsyncSession, name: str) -> TriggerRule:
    rule = await session.get(TriggerRule, name)
    if rule is None:
        raise NotFound(f"no trigger rule '{name}'")
    return rule


# Events --------------------------------------------------------------------------------


async def record(
    session: AsyncSession, incoming: EventIn, settings: Settings, *, now: datetime | None = None
) -> tuple[Event, bool]:
    """Store the event and evaluate its rules; returns it and whether anything changed.

    The same event again changes nothing; a corrected one (same id, other fields)
    re-evaluates its rules for the messages not sent yet. Raises InvalidInput for an
    unknown patient, Conflict for a voided event. Flushes.
    """
    now = now or datetime.now(UTC)
    patient = await session.get(Patient, incoming.patient_id)
    if patient is None:
        raise InvalidInput(
            f"no patient '{incoming.patient_id}'",
            details=[{"field": "patient_id", "message": "no such patient"}],
        )
    event = await event_repository.get_event_for_update(session, incoming.id)
    fields = {
        "type": incoming.type,
        "patient_id": incoming.patient_id,
        "staff_id": incoming.staff_id,
        "occurred_at": incoming.occurred_at,
        "data": incoming.data,
    }
    if event is None:
        event = Event(id=incoming.id, rule_errors={}, **fields)
        session.add(event)
        await session.flush()
    elif event.voided_at is not None:
        raise Conflict(f"event '{incoming.id}' was voided")
    elif all(getattr(event, name) == value for name, value in fields.items()):
        return event, False
    else:
        for name, value in fields.items():
            setattr(event, name, value)
    event.rule_errors = await _evaluate_rules(session, event, patient, settings, now)
    await session.flush()
    await session.refresh(event)
    return event, True


async def _evaluate_rules(
    session: AsyncSession, event: Event, patient: Patient, settings: Settings, now: datetime
) -> dict[str, str]:
    context = context_of(event, patient)
    window = notification_service.window_of(settings)
    errors: dict[str, str] = {}
    not_holding: list[str] = []
    rules = await event_repository.active_rules(session, event.type)
    staff = (
        await session.get(StaffMember, event.staff_id)
        if event.staff_id is not None and any(r.recipient == "staff" for r in rules)
        else None
    )
    for rule in rules:
        try:
            values = await _notification_of(
                session, rule, event, patient, staff, context, window, now
            )
        except Exception as exc:  # a rule's failure is the rule's: recorded
            # Kept in JSONB: CEL's errors may quote what an expression made (a null too).
            errors[rule.name] = storable_text(f"{type(exc).__name__}: {exc}"[:500])
            TRIGGER_RULE_ERRORS.labels(rule=rule.name).inc()
            log.warning("trigger rule failed", extra={"rule": rule.name, "event_id": event.id})
            continue
        if values is None:
            not_holding.append(rule.name)
            continue
        values["expires_at"] = values["due_at"] + timedelta(days=settings.expiry_days(rule.purpose))
        await event_repository.upsert_rule_notification(session, values, UNSENT)
        NOTIFICATIONS_SCHEDULED.inc()
    if not_holding:
        await event_repository.clear_unsent(
            session, event.id, UNSENT, CLEARED, "the rule's condition no longer holds", not_holding
        )
    return errors


async def _notification_of(
    session: AsyncSession,
    rule: TriggerRule,
    event: Event,
    patient: Patient,
    staff: StaffMember | None,
    context: dict[str, Any],
    window: MessagingWindow,
    now: datetime,
) -> dict[str, Any] | None:
    """The notification `rule` makes of `event`, or None when its condition is false.

    A staff rule's goes to the event's staff member (`staff`, looked up once per event),
    in their locale, inside the messaging window of the patient's time zone (staff have
    none of their own), with the patient's country; it raises RecipientError when the
    event names no staff member or an unknown one."""
    holds = compile_expression(rule.condition).evaluate(context)
    if not isinstance(holds, bool):
        raise TypeError(f"the condition gave {type(holds).__name__}, not a bool")
    if not holds:
        return None
    locale: str = patient.locale
    patient_id: str | None = patient.id
    staff_id: str | None = None
    if rule.recipient == "staff":
        if event.staff_id is None:
            raise RecipientError("the rule's recipient is staff and the event has no staff_id")
        if staff is None:
            raise RecipientError(f"no staff member '{event.staff_id}' (PUT /v1/staff/{{id}})")
        locale, patient_id, staff_id = staff.locale, None, staff.id
    given = {
        name: _text(compile_expression(source).evaluate(context))
        for name, source in rule.parameters.items()
    }
    # CEL's escapes make any character ("\u202e", "\x00"): held to the rule of the
    # API's own variables, a rule's failure, not a 500 or an override in a message.
    check_storable(given, "parameters")
    variables = {**notification_service.standard_variables(patient), **given}
    rendered = await template_service.render(session, rule.template, locale, variables)
    send_at = send_moment(SendAt.model_validate(rule.send_at), event.occurred_at, patient)
    return {
        "id": time_ordered_uuid(),
        "patient_id": patient_id,
        "staff_id": staff_id,
        "country": patient.country,
        "purpose": rule.purpose,
        "template_key": rendered.key,
        "locale": rendered.locale,
        "variables": given,
        "title": rendered.title,
        "body": rendered.body,
        "send_at": send_at,
        "state": NotificationState.SCHEDULED,
        "due_at": window.next_moment(max(send_at, now), patient.time_zone),
        "channel_index": 0,
        "retry_count": 0,
        "event_id": event.id,
        "rule_name": rule.name,
    }


def send_moment(send_at: SendAt, occurred_at: datetime, patient: Patient) -> datetime:
    """`occurred_at` plus the rule's offset, at its local time of day if it has one
    (before the messaging window moves it)."""
    moment = occurred_at + timedelta(days=send_at.days, hours=send_at.hours)
    if send_at.at is None:
        return moment.astimezone(UTC)
    local_day = moment.astimezone(zone(patient.time_zone)).date()
    return datetime.combine(local_day, send_at.at, tzinfo=zone(patient.time_zone)).astimezone(UTC)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


async def void(session: AsyncSession, event_id: str, *, now: datetime | None = None) -> Event:
    """Void the event: its unsent notifications end `cleared`. Voiding twice is a no-op.
    Raises NotFound. Flushes."""
    event = await event_repository.get_event_for_update(session, event_id)
    if event is None:
        raise NotFound(f"no event '{event_id}'")
    if event.voided_at is None:
        event.voided_at = now or datetime.now(UTC)
        await event_repository.clear_unsent(session, event_id, UNSENT, CLEARED, "event voided")
        await session.flush()
        await session.refresh(event)
    return event


async def get(session: AsyncSession, event_id: str) -> Event:
    event = await session.get(Event, event_id)
    if event is None:
        raise NotFound(f"no event '{event_id}'")
    return event
