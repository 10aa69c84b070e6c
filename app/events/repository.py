"""SQL for events, trigger rules and the notifications they schedule."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Event, Notification, TriggerRule


async def get_event_for_update(session: AsyncSession, event_id: str) -> Event | None:
    return await session.scalar(
        select(Event).where(Event.id == event_id).with_for_update(),
        execution_options={"populate_existing": True},
    )


async def active_rules(session: AsyncSession, event_type: str) -> Sequence[TriggerRule]:
    return (
        await session.scalars(
            select(TriggerRule)
            .where(TriggerRule.event_type == event_type, TriggerRule.active)
            .order_by(TriggerRule.name)
        )
    ).all()


async def upsert_rule(session: AsyncSession, name: str, values: dict[str, Any]) -> TriggerRule:
    statement = (
        insert(TriggerRule)
        .values(name=name, **values)
        .on_conflict_do_update(
            index_elements=[TriggerRule.name], set_={**values, "updated_at": func.now()}
        )
        .returning(TriggerRule)
    )
    return (await session.scalars(statement, execution_options={"populate_existing": True})).one()


async def upsert_rule_notification(
    session: AsyncSession, values: dict[str, Any], unsent: Collection[str]
) -> None:
    """One notification per (event, rule): insert it, or rewrite it while it is unsent
    (its state kept: a muted one stays muted), its recipient included (both columns at
    once: a rule changed from patient to staff moves it whole)."""
    rewritten = ("title", "body", "variables", "locale", "template_key", "due_at",
                 "expires_at", "send_at", "purpose", "patient_id", "staff_id",
                 "country")  # fmt: skip
    statement = insert(Notification).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[Notification.event_id, Notification.rule_name],
        index_where=text("event_id IS NOT NULL"),
        set_={
            **{name: getattr(statement.excluded, name) for name in rewritten},
            "updated_at": func.now(),
        },
        where=Notification.state.in_(unsent),
    )
    await session.execute(statement)


async def clear_unsent(
    session: AsyncSession,
    event_id: str,
    unsent: Collection[str],
    cleared: str,
    reason: str,
    rule_names: Collection[str] | None = None,
) -> int:
    """Clear the event's unsent notifications (of `rule_names` only, when given)."""
    statement = update(Notification).where(
        Notification.event_id == event_id, Notification.state.in_(unsent)
    )
    if rule_names is not None:
        statement = statement.where(Notification.rule_name.in_(rule_names))
    result = await session.execute(
        statement.values(state=cleared, failure_reason=reason, updated_at=func.now()),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
