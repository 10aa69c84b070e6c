"""The unread fallback: a reminder delivered on Imo or WhatsApp but not read within
UNREAD_FALLBACK_HOURS (per purpose) is sent once more, on the next channel of its chain.

A cron job on every worker finds them in sets and hands them to the dispatcher (due now,
`scheduled`); the dispatcher sends them in the patient's messaging window like any other,
so switches, expiry and the allow-list apply. Each reminder is handed on at most once
(`unread_fallback_at`), whichever worker finds it, and however often the job runs. Both
attempts stay on the notification. A read receipt that arrives after the hand-on moves
the notification to `read` (the state machine's REPORT_READ beats a waiting fallback),
so a second message not sent yet is not sent; one sent already has gone.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery import repository as delivery_repository

log = logging.getLogger(__name__)

HAND_ON_BATCH = 1000


async def hand_on_unread(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, batch: int = HAND_ON_BATCH
) -> int:
    """Hand on every unread reminder due for its fallback -> how many. Idempotent."""
    if not settings.unread_fallback_hours:
        return 0
    total = 0
    while True:
        async with sessionmaker() as session:
            handed = await delivery_repository.hand_on_unread(
                session, settings.unread_fallback_hours, batch
            )
            await session.commit()
        total += len(handed)
        if len(handed) < batch:
            break
    if total:
        log.info("unread reminders handed on to their next channel", extra={"count": total})
    return total
