"""The report batcher tries a batch again when PostgreSQL broke a deadlock or dropped the
connection, and fails its callers at once on any other error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.delivery import reports
from app.delivery.reports import APPLY_TRIES, ReportBatcher
from app.delivery.types import Report
from app.states import AttemptStatus
from tests.db.test_session import dbapi_error

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

    monkeypatch.setattr(reports, "apply_reports", apply)
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
