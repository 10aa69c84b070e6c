"""What SendGrid's events and bounce emails say of the emails we sent, applied to their
delivery attempts through the one path of every provider's reports
(app/delivery/provider_reports.py): an attempt moves only forward (a late `delivered`
after a bounce, a repeat, change nothing but the raw report log), a failure falls back
to the next channel of the notification's chain as an SMS failure does, and every
report on a known attempt is kept in the raw log as received.

An email is named by the Message-ID it went out with (the email channel records it,
without angle brackets, as the attempt's provider id). A report that names no attempt
of ours (mail sent by someone else through the same account, an attempt deleted since)
changes nothing and is counted only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import provider_reports
from app.delivery.types import Report
from app.email import addresses
from app.email import repository as email_repository
from app.email.rules import MessageReport
from app.states import AttemptStatus

log = logging.getLogger(__name__)


async def apply(session: AsyncSession, reports: Sequence[MessageReport]) -> int:
    """Apply `reports` to the attempts they name -> how many named one. Flushes; the
    caller commits. Idempotent: states only move forward."""
    if not reports:
        return 0
    attempts = await email_repository.email_attempts(session, {r.message_id for r in reports})
    matched = [
        attempt_report(attempts[r.message_id], r) for r in reports if r.message_id in attempts
    ]
    if len(matched) < len(reports):
        log.info(
            "email reports about no attempt of ours",
            extra={"count": len(reports) - len(matched)},
        )
    if matched:
        await provider_reports.apply_reports(session, matched)
    return len(matched)


def attempt_report(attempt_id: int, report: MessageReport) -> Report:
    """`report` as a report on attempt `attempt_id`, the recipient's address masked in
    every text kept (a bounce's reason often quotes it)."""
    detail = addresses.mask_in(report.detail, report.address) if report.detail else None
    failure_reason = None
    if report.status == AttemptStatus.FAILED:
        # The notification's reason reads `email: bounced: 550 5.1.1 ...`.
        why = report.failure or "failed"
        failure_reason = f"{why}: {detail}" if detail else why
    return Report(
        attempt_id,
        report.status,
        provider_message_id=report.message_id,
        provider_status=report.provider_status,
        error_code=report.error_code,
        error_message=detail,
        failure_reason=failure_reason[:500] if failure_reason else None,
    )
