"""Group commit for provider reports: thousands of callbacks a second on a small machine.

Each API process collects the reports that arrive within a few milliseconds and applies
them in one transaction with set-based SQL. Every caller waits for the commit that holds
its report, so an acknowledged callback is never lost. A batch is tried again at once if
the error was a deadlock or a lost connection; a batch that still fails is split in
halves until the report that fails is alone, so one bad report never costs its
batch-mates (only its own caller sees a 5xx, and may retry). Locks are taken in id
order, so batches of concurrent API processes cannot deadlock with each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.session import transient_database_error
from app.delivery.provider_reports import UnknownAttempt, apply_reports
from app.delivery.types import Report

log = logging.getLogger(__name__)

# Tries of one batch when PostgreSQL breaks a deadlock or drops the connection.
APPLY_TRIES = 3
# A burst of callbacks is summed up in one log line at most this often.
BURST_LOG_SECONDS = 1.0


class ReportBatcher:
    """Collects reports for up to `max_wait` seconds or `max_batch` reports, then applies
    them together. `sessionmaker` is looked up per batch (tests swap it)."""

    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        *,
        max_batch: int = 500,
        max_wait: float = 0.005,
        parallel: int = 4,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._max_wait = max_wait
        # Batches committing at once: while one waits for its WAL flush, the next fills.
        self._slots = asyncio.Semaphore(parallel)
        self._applying: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[tuple[Report, asyncio.Future[bool]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._burst: Counter[str] = Counter()
        self._burst_log: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="report-batcher")

    async def stop(self) -> None:
        """Stop taking reports; batches already being applied finish."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._applying:
            await asyncio.gather(*self._applying, return_exceptions=True)
        if self._burst_log is not None:
            self._burst_log.cancel()
            self._log_burst()

    async def submit(self, report: Report) -> bool:
        """Whether the report changed anything. Raises UnknownAttempt, the error this
        report alone causes, or a transient database error that outlasted its tries."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((report, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self._max_wait
            while len(batch) < self._max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(
                        self._queue.get_nowait()
                        if not self._queue.empty()
                        else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except TimeoutError:
                    break
            await self._slots.acquire()
            task = asyncio.create_task(self._apply(batch))
            self._applying.add(task)
            task.add_done_callback(self._applied)

    def _applied(self, task: asyncio.Task[None]) -> None:
        self._applying.discard(task)
        self._slots.release()

    async def _apply(self, batch: list[tuple[Report, asyncio.Future[bool]]]) -> None:
        """Apply a batch and answer its callers. A batch that fails for another reason
        than a transient one is split in halves, each applied on its own, down to the
        report that fails: that caller alone hears of the error. (n reports with one bad
        cost about 2 log2(n) more transactions.)"""
        try:
            results = await self._apply_with_tries([report for report, _ in batch])
        except Exception as exc:
            # Still failing after its tries, a transient error is the database's, not a
            # report's: splitting would only hammer a server that is away.
            if len(batch) > 1 and not transient_database_error(exc):
                half = len(batch) // 2
                await self._apply(batch[:half])
                await self._apply(batch[half:])
                return
            log.exception(
                "applying provider reports failed",
                extra={"reports": len(batch), "attempt_id": batch[0][0].attempt_id},
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self._count([report for report, _ in batch], results)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _count(self, reports: list[Report], results: list[bool | UnknownAttempt]) -> None:
        """Add a batch to the burst; its summary is logged BURST_LOG_SECONDS later."""
        for report, result in zip(reports, results, strict=True):
            if isinstance(result, UnknownAttempt):
                self._burst["unknown attempt"] += 1
            else:
                self._burst[str(report.status) if result else "repeated"] += 1
        if self._burst_log is None:
            loop = asyncio.get_running_loop()
            self._burst_log = loop.call_later(BURST_LOG_SECONDS, self._log_burst)

    def _log_burst(self) -> None:
        """One line a burst of callbacks, readable in `notify dev`'s console and a field
        each in JSON: counts by status only, never a phone number or a text."""
        burst, self._burst, self._burst_log = self._burst, Counter(), None
        parts = ", ".join(f"{count} {name}" for name, count in burst.most_common())
        log.info(
            "provider reports: %d (%s)",
            burst.total(),
            parts,
            extra={"reports": burst.total(), "by_status": dict(burst)},
        )

    async def _apply_with_tries(self, reports: list[Report]) -> list[bool | UnknownAttempt]:
        """Apply in one transaction, tried again after a deadlock or a lost connection."""
        for attempt in range(APPLY_TRIES):
            try:
                async with self._sessionmaker()() as session:
                    results = await apply_reports(session, reports)
                    await session.commit()
                return results
            except Exception as exc:
                # A deadlock with a write-back (rolled back: nothing applied) or a server
                # away for a moment: applying again is safe, and spares the provider a 5xx
                # that it may never retry.
                if attempt + 1 < APPLY_TRIES and transient_database_error(exc):
                    log.warning("applying provider reports: retrying after %s", type(exc).__name__)
                    await asyncio.sleep(0.02 * 2**attempt)
                    continue
                raise
        raise AssertionError("unreachable")


async def report_batcher(request: Request) -> ReportBatcher:
    """The API process's batcher (built in the app's lifespan): a FastAPI dependency
    (async: a plain function would be run in a thread, a hop per callback)."""
    batcher: ReportBatcher = request.app.state.report_batcher
    return batcher
