"""The report batcher tries a batch again when PostgreSQL broke a deadlock or dropped the
connection; on any other error it fails only the report that causes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.delivery import report_batcher
from app.delivery.report_batcher import APPLY_TRIES, ReportBatcher
from app.delivery.types import Report
from app.models import DeliveryAttempt
from app.states import AttemptStatus
from tests.db.test_session import dbapi_error
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPORT = Report(attempt_id=1, status=AttemptStatus.DELIVERED)


async def submit_with_failures(
    monkeypatch: pytest.MonkeyPatch,
    sessionmaker: async_sessionmaker[AsyncSession],
    failures: list[Exception],
) -> tuple[list[int], Any]:
    """Submit one report while the first applies raise `failures`, in order."""
    calls: list[int] = []

    async def apply(session: AsyncSession, batch: list[Report]) -> list[bool]:
        calls.append(len(batch))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return [True] * len(batch)

    monkeypatch.setattr(report_batcher, "apply_reports", apply)
    batcher = ReportBatcher(lambda: sessionmaker)
    batcher.start()
    try:
        return calls, await batcher.submit(REPORT)
    except Exception as exc:
        return calls, exc
    finally:
        await batcher.stop()


async def test_a_deadlock_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    calls, result = await submit_with_failures(monkeypatch, db_sessionmaker, [dbapi_error("40P01")])
    assert (calls, result) == ([1, 1], True)


async def test_other_errors_fail_the_callers_at_once(
    monkeypatch: pytest.MonkeyPatch, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    error = dbapi_error("23505")
    calls, result = await submit_with_failures(monkeypatch, db_sessionmaker, [error])
    assert (calls, result) == ([1], error)


async def test_tries_are_bounded(
    monkeypatch: pytest.MonkeyPatch, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    errors = [dbapi_error("40P01") for _ in range(APPLY_TRIES)]
    calls, result = await submit_with_failures(monkeypatch, db_sessionmaker, errors)
    assert (len(calls), result) == (APPLY_TRIES, errors[-1])


async def test_a_report_that_fails_fails_alone(
    db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """One report the database refuses (an id beyond bigint) in a batch of 40: the other
    39 are applied and answered; only its own caller hears of the error."""
    patient = await make_patient(db_session)
    notification = await make_notification(db_session, patient, state="sent")
    attempts = [
        DeliveryAttempt(notification_id=notification.id, channel="sms", status="sent")
        for _ in range(39)
    ]
    db_session.add_all(attempts)
    await db_session.commit()
    reports = [Report(attempt.id, AttemptStatus.DELIVERED) for attempt in attempts]
    reports.insert(20, Report(2**63, AttemptStatus.DELIVERED))
    batcher = ReportBatcher(lambda: db_sessionmaker, max_batch=40, max_wait=5, parallel=1)
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.submit(report) for report in reports), return_exceptions=True
        )
    finally:
        await batcher.stop()
    assert isinstance(results.pop(20), DBAPIError)
    assert results == [True] * 39


async def test_a_burst_of_callbacks_is_one_log_line_of_counts(
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    patient = await make_patient(db_session, mobile_e164="+8801711000042")
    notification = await make_notification(db_session, patient, state="sent")
    attempts = [
        DeliveryAttempt(notification_id=notification.id, channel="sms", status="sent")
        for _ in range(3)
    ]
    db_session.add_all(attempts)
    await db_session.commit()
    reports = [
        Report(attempts[0].id, AttemptStatus.DELIVERED),
        Report(attempts[1].id, AttemptStatus.DELIVERED),
        Report(attempts[2].id, AttemptStatus.READ),
        Report(attempts[2].id, AttemptStatus.DELIVERED),  # ranks lower: changes nothing
    ]
    batcher = ReportBatcher(lambda: db_sessionmaker)
    batcher.start()
    with caplog.at_level("INFO", logger="app.delivery.report_batcher"):
        try:
            for report in reports:
                await batcher.submit(report)
        finally:
            await batcher.stop()  # logs the burst at once, without waiting for its second
    [line] = [r for r in caplog.records if r.getMessage().startswith("provider reports")]
    assert line.getMessage() == "provider reports: 4 (2 delivered, 1 read, 1 repeated)"
    assert line.by_status == {"delivered": 2, "read": 1, "repeated": 1}
    assert "1711000042" not in caplog.text
