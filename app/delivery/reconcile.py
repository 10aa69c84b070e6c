"""Lost callbacks, reconciled: an attempt still `sent` RECONCILE_AFTER_MINUTES after it was
sent (its final status callback never came, or never will) is looked up at its provider
and moved forward through the same path as a callback (`apply_reports`).

Only channels whose adapter is a `StatusLookup` are reconciled: SMS (Twilio), and
WhatsApp when it goes through Twilio. Imo and the WhatsApp Cloud API cannot be asked.
A cron job on every worker claims a batch (SKIP LOCKED, stamped before the look-ups, so
each attempt is looked up once per interval whichever worker runs), and looks each up
through the provider's shared rate limiter at low priority: reminders go first.

An attempt is looked up at most MAX_CHECKS times, RECONCILE_AFTER_MINUTES apart, while
the provider still says `queued`/`sent`; then it is left `sent`, with the reason on it.
A message the provider does not know (404) is recorded on its attempt (`error_code`
`not_found_at_provider`), counted and reported to Sentry once per run, and not looked up
again: never a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import datetime, timedelta

import sentry_sdk
from prometheus_client import Counter as PrometheusCounter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import (
    Channel,
    MessageNotFound,
    PermanentChannelError,
    ProviderStatus,
    StatusLookup,
    TransientChannelError,
)
from app.config import Settings
from app.delivery import repository as delivery_repository
from app.delivery.provider_reports import apply_reports
from app.delivery.repository import SentAttempt
from app.delivery.types import Report
from app.observability import report_unexpected
from app.ratelimit import RateLimiter
from app.states import AttemptStatus

log = logging.getLogger(__name__)

RECONCILED = PrometheusCounter(
    "notify_reconciled_attempts_total",
    "Look-ups of attempts whose final status never came, by channel and result",
    ["channel", "result"],
)
MAX_CHECKS = 5
BATCH = 500
LOOKUPS_IN_FLIGHT = 20
NOT_FOUND = "not_found_at_provider"


def reconcilable(channels: dict[str, Channel]) -> dict[str, StatusLookup]:
    """The channels whose provider answers status look-ups."""
    return {name: c for name, c in channels.items() if isinstance(c, StatusLookup)}


async def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    channels: dict[str, Channel],
    limiters: dict[str, RateLimiter],
    now: datetime,
    *,
    batch: int = BATCH,
) -> Counter[str]:
    """Look up one batch of stale `sent` attempts and apply what the providers say ->
    how many by result: moved (forward), unchanged (still sent at the provider),
    not_found, gave_up (still sent after MAX_CHECKS look-ups), error (transient, or
    unexpected: looked up again after the interval)."""
    result: Counter[str] = Counter()
    lookups = reconcilable(channels)
    if not lookups:
        return result
    after = timedelta(minutes=settings.reconcile_after_minutes)
    async with sessionmaker() as session:
        attempts = await delivery_repository.claim_sent_attempts(
            session,
            sorted(lookups),
            sent_before=now - after,
            checked_before=now - after,
            max_checks=MAX_CHECKS,
            limit=batch,
        )
        await session.commit()
    if not attempts:
        return result

    semaphore = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

    async def look_up(attempt: SentAttempt) -> ProviderStatus | Exception:
        async with semaphore:
            try:
                await limiters[attempt.channel].acquire(1, priority="low")
                return await lookups[attempt.channel].fetch_status(attempt.provider_message_id)
            except Exception as exc:  # channel errors, Redis, adapter bugs: counted below
                return exc

    answers = await asyncio.gather(*(look_up(a) for a in attempts))

    reports: list[Report] = []
    give_up: dict[int, tuple[str, str]] = {}
    for attempt, answer in zip(attempts, answers, strict=True):
        outcome = _outcome(attempt, answer, reports, give_up)
        result[outcome] += 1
        RECONCILED.labels(attempt.channel, outcome).inc()

    async with sessionmaker() as session:
        if reports:
            applied = await apply_reports(session, reports)
            unknown = sum(1 for changed in applied if not isinstance(changed, bool))
            if unknown:
                log.warning("reconciled attempts not found", extra={"count": unknown})
        await delivery_repository.give_up_reconciling(session, give_up, MAX_CHECKS)
        await session.commit()

    if result["not_found"]:
        # Once per run, not per message: the provider lost track of messages we sent.
        log.error("providers do not know messages we sent", extra={"count": result["not_found"]})
        sentry_sdk.capture_message(
            f"reconciling: {result['not_found']} sent message(s) unknown to their provider",
            level="error",
        )
    log.info("reconciled sent attempts", extra=dict(result))
    return result


def _outcome(
    attempt: SentAttempt,
    answer: ProviderStatus | Exception,
    reports: list[Report],
    give_up: dict[int, tuple[str, str]],
) -> str:
    """Sort one look-up's answer into a report, a give-up or nothing -> its result."""
    if isinstance(answer, MessageNotFound):
        give_up[attempt.id] = (NOT_FOUND, f"reconciling: {answer.message}"[:500])
        return "not_found"
    if isinstance(answer, Exception):
        if isinstance(answer, PermanentChannelError) and answer.unexpected:
            report_unexpected(attempt.channel, answer.message, answer.detail)
        elif not isinstance(answer, TransientChannelError):
            log.warning("status look-up failed: %r", type(answer).__name__)
        return _unchanged(attempt, give_up, "error")
    status = answer.status
    if status in (AttemptStatus.DELIVERED, AttemptStatus.READ, AttemptStatus.FAILED):
        reports.append(
            Report(
                attempt.id,
                AttemptStatus(status),
                provider_message_id=answer.provider_message_id,
                provider_status=answer.provider_status,
                error_code=answer.error_code,
                error_message=answer.error_message,
            )
        )
        return "moved"
    if status == "unknown":
        log.warning("unknown status in a look-up", extra={"status": answer.provider_status[:40]})
    return _unchanged(attempt, give_up, "unchanged")


def _unchanged(attempt: SentAttempt, give_up: dict[int, tuple[str, str]], result: str) -> str:
    if attempt.checks >= MAX_CHECKS:
        give_up[attempt.id] = (
            "no_final_status",
            f"reconciling: no final status after {attempt.checks} look-ups",
        )
        return "gave_up"
    return result
