"""What providers report after sending: read receipts, delivery statuses, failures.

Every report is idempotent and monotonic: an attempt's status only rises, and a
notification follows its attempts forward, never back. Reports are applied in sets
(see app/delivery/reports.py for how the API batches them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import policy
from app.delivery import repository as delivery_repository
from app.delivery.policy import SendOn
from app.notifications.states import ATTEMPT_RANK, AttemptStatus, NotificationState

S = NotificationState


class UnknownAttempt(LookupError):
    """No such attempt, or the report names another message of the provider's."""


@dataclass(frozen=True, slots=True)
class Report:
    attempt_id: int
    status: AttemptStatus
    provider_message_id: str | None = None
    provider_status: str | None = None
    error_code: str | None = None
    error_message: str | None = None


async def apply_reports(
    session: AsyncSession, reports: list[Report]
) -> list[bool | UnknownAttempt]:
    """Apply reports in one unit of work; per report: whether it changed anything, or
    UnknownAttempt. Of several reports on one attempt the highest-ranked is applied; the
    rest change nothing (they would be overtaken anyway). Flushes; the caller commits.
    """
    strongest: dict[int, int] = {}
    for position, report in enumerate(reports):
        best = strongest.get(report.attempt_id)
        if best is None or ATTEMPT_RANK[report.status] > ATTEMPT_RANK[reports[best].status]:
            strongest[report.attempt_id] = position
    chosen = [reports[position] for position in strongest.values()]
    advanced = await delivery_repository.advance_attempts(session, chosen)

    changed = {attempt_id: row for attempt_id, row in advanced.items() if row.changed}
    # A notification still `sending` is the dispatcher's to settle: it reconciles with
    # the attempt's stored status when it writes its own result.
    await delivery_repository.raise_notifications(
        session,
        [
            (row.notification_id, S(row.status))
            for row in changed.values()
            if row.status in (AttemptStatus.DELIVERED, AttemptStatus.READ)
        ],
    )
    for attempt_id, row in changed.items():
        if row.status == AttemptStatus.FAILED:
            await follow_failure(session, row.notification_id, attempt_id)

    return [
        UnknownAttempt(report.attempt_id)
        if report.attempt_id not in advanced
        else strongest[report.attempt_id] == position and report.attempt_id in changed
        for position, report in enumerate(reports)
    ]


async def report(
    session: AsyncSession, attempt_id: int, status: AttemptStatus, **fields: str | None
) -> bool:
    """Apply one report; returns whether anything changed. Raises UnknownAttempt."""
    [result] = await apply_reports(session, [Report(attempt_id, status, **fields)])
    if isinstance(result, UnknownAttempt):
        raise result
    return result


async def follow_failure(
    session: AsyncSession, notification_id: uuid.UUID, attempt_id: int
) -> None:
    """The attempt that made a notification `sent` failed after all: fall back to the
    next channel, or fail the notification when none is left."""
    locked = await delivery_repository.lock_notification_for_callback(session, notification_id)
    if locked is None:
        return
    state, chain, channel_index, imo_status = locked
    if state != S.SENT or not chain:
        return
    # Only the attempt that made the notification `sent` can unmake it.
    if await delivery_repository.latest_attempt_id(session, notification_id) != attempt_id:
        return
    outcome = policy.after_delivery_failure(
        imo_status,
        SendOn(chain, channel_index),
        datetime.now(UTC),
        "the provider reported the message failed",
    )
    await delivery_repository.settle(session, {notification_id: outcome})
