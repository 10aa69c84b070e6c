"""What providers report after sending: read receipts, delivery statuses, failures.

Every report is idempotent and monotonic: an attempt and its notification move only as
the tables of app/states.py allow, forward, never back; a report that
does not move its attempt changes nothing. Reports are applied in sets
(see app/delivery/report_batcher.py for how the API batches them).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels import whatsapp
from app.channels.base import ChannelName
from app.delivery import policy
from app.delivery import repository as delivery_repository
from app.delivery.types import Report, SendOn
from app.models import DeliveryAttempt
from app.observability import report_template_rejected
from app.states import (
    ATTEMPT_RANK,
    ATTEMPT_REPORT_EVENTS,
    AttemptStatus,
    NotificationState,
)
from app.webhooks import service as webhook_service

S = NotificationState
log = logging.getLogger(__name__)


class UnknownAttempt(LookupError):
    """No such attempt, or the report names another message of the provider's."""


def fitted(report: Report) -> Report:
    """The report with its fields cut to the attempt's columns: a provider's over-long
    error code must not cost the report (or its batch). The raw log keeps them whole.

    A provider message id is never cut (it would name another message): callers refuse
    one longer than PROVIDER_MESSAGE_ID_CHARS.
    """
    cut = {
        field: value[:limit]
        for field, limit in _FIELD_CHARS.items()
        if (value := getattr(report, field)) is not None and len(value) > limit
    }
    if not cut:
        return report
    log.warning(
        "provider report field cut to its column",
        extra={"attempt_id": report.attempt_id, "fields": sorted(cut)},
    )
    return replace(report, **cut)


def _chars(column: str) -> int:
    """The width of an attempt's string column."""
    column_type = DeliveryAttempt.__table__.c[column].type
    assert isinstance(column_type, String) and column_type.length is not None
    return column_type.length


PROVIDER_MESSAGE_ID_CHARS = _chars("provider_message_id")
_FIELD_CHARS = {field: _chars(field) for field in ("provider_status", "error_code")}


async def apply_reports(
    session: AsyncSession, reports: list[Report]
) -> list[bool | UnknownAttempt]:
    """Apply reports in one unit of work; per report: whether it changed anything, or
    UnknownAttempt. Every report on a known attempt goes to the raw log, as received.
    Of several reports on one message the highest-ranked is applied; the rest change
    nothing (they would be overtaken anyway). Reports on one attempt that
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
            session, [fitted(reports[position]) for position in layer.values()]
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
            if row.status in ATTEMPT_REPORT_EVENTS
        ],
    )
    no_whatsapp = []
    for position, row in changed.items():
        if row.status == AttemptStatus.FAILED:
            code = reports[position].error_code or ""
            on_whatsapp = row.channel == ChannelName.WHATSAPP
            if on_whatsapp and code in whatsapp.NO_ACCOUNT_CODES:
                no_whatsapp.append(row.notification_id)
            template_rejected = on_whatsapp and code in whatsapp.TEMPLATE_REJECTED_CODES
            if template_rejected:
                template = await delivery_repository.whatsapp_template_of(
                    session, row.notification_id
                )
                report_template_rejected(row.channel, template, f"reported failed, code {code}")
            await follow_failure(
                session,
                row.notification_id,
                reports[position].attempt_id,
                fall_back=not template_rejected,
                reason=reports[position].failure_reason,
            )
    await delivery_repository.mark_no_whatsapp(session, no_whatsapp)
    await webhook_service.notifications_changed(
        session, {row.notification_id for row in changed.values()}
    )

    answers: list[bool | UnknownAttempt] = []
    for position, report in enumerate(reports):
        chosen = strongest[(report.attempt_id, report.provider_message_id)]
        if chosen not in applied:
            answers.append(UnknownAttempt(report.attempt_id))
        else:
            answers.append(chosen == position and position in changed)
    await delivery_repository.log_reports(
        session,
        [
            (report, answer)
            for report, answer in zip(reports, answers, strict=True)
            if isinstance(answer, bool)
        ],
    )
    return answers


async def follow_failure(
    session: AsyncSession,
    notification_id: uuid.UUID,
    attempt_id: int,
    *,
    fall_back: bool = True,
    reason: str | None = None,
) -> None:
    """The attempt that made a notification `sent` failed after all: fall back to the
    next channel, or fail the notification when none is left (or `fall_back` is False:
    a template the provider refused, which an operator must fix). `reason`: why, when
    not the provider's report."""
    locked = await delivery_repository.lock_notification_for_callback(session, notification_id)
    if locked is None:
        return
    state, chain, channel_index, imo_status = locked
    # Only a notification its provider accepted: a worker settles one it holds, and a
    # failure changes nothing once a report proved it reached the patient.
    if state != S.SENT or not chain:
        return
    # Only the attempt that made the notification `sent` can unmake it.
    if await delivery_repository.latest_attempt_id(session, notification_id) != attempt_id:
        return
    outcome = policy.after_delivery_failure(
        imo_status,
        SendOn(chain[: channel_index + 1] if not fall_back else chain, channel_index),
        datetime.now(UTC),
        reason
        or (
            "the provider reported the message failed"
            + ("" if fall_back else ": its template was refused")
        ),
    )
    await delivery_repository.settle(session, {notification_id: outcome})
