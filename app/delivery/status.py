"""What providers report after sending: read receipts, delivery statuses, failures.

Every report is idempotent and monotonic: an attempt's status only rises, and a
notification follows its attempts forward, never back. Reports are applied in sets
(see app/delivery/reports.py for how the API batches them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import policy
from app.delivery import repository as delivery_repository
from app.delivery.types import Report, SendOn
from app.states import ATTEMPT_RANK, AttemptStatus, NotificationState

S = NotificationState


class UnknownAttempt(LookupError):
    """No such attempt, or the report names another message of the provider's."""


async def apply_reports(
    session: AsyncSession, reports: list[Report]
) -> list[bool | UnknownAttempt]:
    """Apply reports in one unit of work; per report: whether it changed anything, or
    UnknownAttempt. Of several reports on one message the highest-ranked is applied; the
    rest change nothing (they would be overtaken anyway). Reports on one attempt that
    name different provider messages are applied in turn, so that a stray or forged one
    cannot make the real one look unknown. Flushes; the caller commits.
    """
    strongest: dict[tuple[int, str | None], int] = {}
    for position, report in enumerate(reports):
        key = (report.attempt_id, report.provider_message_id)
        best = strongest.get(key)
        if best is None or ATTEMPT_RANK[report.status] > ATTEMPT_RANK[reports[best].status]:
            strongest[key] = position
    # Layers with one report per attempt each: one statement cannot update a row twice.
    layers: list[dict[int, int]] = []
    for position in strongest.values():
        attempt_id = reports[position].attempt_id
        layer = next((layer for layer in layers if attempt_id not in layer), None)
        if layer is None:
            layer = {}
            layers.append(layer)
        layer[attempt_id] = position
    applied: dict[int, delivery_repository.AdvancedAttempt] = {}
    for layer in layers:
        advanced = await delivery_repository.advance_attempts(
            session, [reports[position] for position in layer.values()]
        )
        applied.update(
            (position, advanced[attempt_id])
            for attempt_id, position in layer.items()
            if attempt_id in advanced
        )

    changed = {position: row for position, row in applied.items() if row.changed}
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
    for position, row in changed.items():
        if row.status == AttemptStatus.FAILED:
            await follow_failure(session, row.notification_id, reports[position].attempt_id)

    answers: list[bool | UnknownAttempt] = []
    for position, report in enumerate(reports):
        chosen = strongest[(report.attempt_id, report.provider_message_id)]
        if chosen not in applied:
            answers.append(UnknownAttempt(report.attempt_id))
        else:
            answers.append(chosen == position and position in changed)
    return answers


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
