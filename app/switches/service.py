"""Switches: pause and resume sending for a scope; what a pause holds goes out on resume."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Switch
from app.switches import repository as switch_repository
from app.switches.scope import Scope

log = logging.getLogger(__name__)


async def put_switch(
    session: AsyncSession, scope: Scope, *, paused: bool, reason: str, by: str, now: datetime
) -> tuple[Switch, int]:
    """Pause or resume `scope` -> (the switch, notifications released now).

    Pausing takes effect at each dispatcher's next batch (every batch reads the
    switches). Resuming makes what the pause held due at once, unless another paused
    switch still covers it (the dispatcher holds it again then). Flushes; the caller
    commits.
    """
    switch = await switch_repository.put(
        session, scope, paused=paused, reason=reason, by=by, now=now
    )
    released = 0 if paused else await switch_repository.release_held(session)
    log.warning(
        "switch %s",
        "paused" if paused else "resumed",
        extra={"scope": str(scope), "by": by, "released": released},
    )
    return switch, released


async def list_switches(session: AsyncSession) -> list[Switch]:
    return await switch_repository.list_switches(session)
