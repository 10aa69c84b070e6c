"""Switches' SQL, and the notifications their pauses hold."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Switch
from app.states import NotificationState
from app.switches.scope import Scope


async def paused_scopes(session: AsyncSession) -> list[Scope]:
    rows = await session.execute(
        select(Switch.country, Switch.channel, Switch.purpose).where(Switch.paused)
    )
    return [Scope(country=row[0], channel=row[1], purpose=row[2]) for row in rows]


async def put(
    session: AsyncSession, scope: Scope, *, paused: bool, reason: str, by: str, now: datetime
) -> Switch:
    """Create or change the switch of `scope`; returns it as stored."""
    values = {"paused": paused, "reason": reason, "changed_by": by, "changed_at": now}
    statement = (
        insert(Switch)
        .values(
            scope=str(scope),
            country=scope.country,
            channel=scope.channel,
            purpose=scope.purpose,
            **values,
        )
        .on_conflict_do_update(index_elements=[Switch.scope], set_={**values, "updated_at": now})
        .returning(Switch)
    )
    switch: Switch = (await session.scalars(statement)).one()
    return switch


async def list_switches(session: AsyncSession) -> list[Switch]:
    return list(await session.scalars(select(Switch).order_by(Switch.scope)))


# Held by a scope that is no longer paused (resumed, or a hold written by a batch that
# read the switches just before the resume): due now. Looked up by the resumed scopes in
# ix_notifications_paused_by, so a large backlog held by a paused switch costs nothing.
_RELEASE = text(
    f"""
    UPDATE notifications AS n SET
        due_at = CASE WHEN n.state = '{NotificationState.SCHEDULED}' THEN now() ELSE n.due_at END,
        failure_reason = CASE WHEN n.state = '{NotificationState.SCHEDULED}' THEN NULL
                              ELSE n.failure_reason END,
        paused_by = NULL,
        updated_at = now()
    WHERE n.paused_by IN (SELECT scope FROM switches WHERE NOT paused)
    """  # noqa: S608 - constants only
)


async def release_held(session: AsyncSession) -> int:
    """Make due now the notifications held by switches no longer paused -> how many."""
    result = await session.execute(_RELEASE)
    return int(result.rowcount)  # type: ignore[attr-defined]
