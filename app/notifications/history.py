"""The message history of a group, an event or a staff member (and any other owner of
messages): the query parameters every such list takes, read through the one
keyset-paginated search of notifications (`notification_service.search`), newest first,
to the very first message.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications import service as notification_service
from app.notifications.repository import NotificationFilter
from app.notifications.schemas import PURPOSE_PATTERN, NotificationPage
from app.states import NotificationState
from app.validation import BoundedDatetime


async def history_filter(
    state: Annotated[
        NotificationState | None,
        Query(description="`pending`: due and not sent yet; `scheduled`: not yet due"),
    ] = None,
    purpose: Annotated[str | None, Query(pattern=PURPOSE_PATTERN)] = None,
    created_from: Annotated[BoundedDatetime | None, Query(description="Included")] = None,
    created_until: Annotated[BoundedDatetime | None, Query(description="Excluded")] = None,
) -> NotificationFilter:
    return NotificationFilter(
        state=state, purpose=purpose, created_from=created_from, created_until=created_until
    )


HistoryFilter = Annotated[NotificationFilter, Depends(history_filter)]


def of_event(where: NotificationFilter, event_id: str) -> NotificationFilter:
    return replace(where, event_id=event_id)


def of_group(where: NotificationFilter, group_name: str) -> NotificationFilter:
    return replace(where, group_name=group_name)


def of_staff(where: NotificationFilter, staff_id: str) -> NotificationFilter:
    return replace(where, staff_id=staff_id)


async def page(
    session: AsyncSession, where: NotificationFilter, *, limit: int, cursor: str | None
) -> NotificationPage:
    """A page of the history `where` selects. Raises InvalidInput for a bad cursor."""
    found = await notification_service.search(session, where, limit=limit, cursor=cursor)
    return NotificationPage.from_models(found.notifications, found.attempts, found.next_cursor)
