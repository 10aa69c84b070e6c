"""Working on an invitation round: claim a batch, invite its patients, write the answers.

Every worker process runs one `InvitationRunner.run` loop (beside its dispatch loops);
`notify invite` and the benchmark call `work` in their own process. Each runner works
`slots` batches at once (so the tail of one overlaps the start of the next), through one
semaphore (`IMO_INVITATION_CONCURRENCY` requests in flight) and the shared Imo limiter
at low priority, so reminders go first.

Before each group of requests leaves (`RESERVE_STEP` patients, fewer at low rates), the
batch's `sent_through` is written and committed; answers are written while the batch is
sent, every `flush_interval` seconds: the authorisations (one statement) and the
batch's counters, skip list and lease (one statement). A worker that dies leaves its
batch `claimed`; once the lease has run out another takes it over and re-reads the
patients still to invite: whoever got an answer that was written is not among them, and
whoever is at or before `sent_through` without one is counted `unconfirmed` and not
sent again in this round.

So a crash never sends one patient two invitations in a round (at most once). The
window it leaves open: patients whose answer was not written yet (at most one flush
interval of the worker's sends, plus those in flight, plus the rest of the group being
sent) are `unconfirmed`: invited once or not at all, and candidates again in the next
round. See docs/invitation-rounds.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import sentry_sdk
from prometheus_client import Counter as PrometheusCounter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import callback_urls
from app.channels import registry as channel_registry
from app.channels.base import ChannelName, Invitation
from app.channels.imo import ImoChannel
from app.channels.reporting import report_failure
from app.config import Settings
from app.imo import repository as imo_repository
from app.imo import rules
from app.imo import service as imo_service
from app.imo.repository import BatchRecord, Candidate
from app.imo.service import ClaimedBatch, Idle
from app.notifications.window import MessagingWindow
from app.ratelimit import RateLimiter
from app.security import TokenSigner
from app.switches import repository as switch_repository
from app.switches.scope import Scope, Switchboard
from app.templates import repository as template_repository
from app.templates.service import PreparedTemplate, locale_candidates

log = logging.getLogger(__name__)

INVITATION_TEMPLATE = "imo_invitation.basic"
INVITATIONS = PrometheusCounter(
    "notify_imo_invitations_total",
    "Imo invitation answers recorded by rounds, by result",
    ["result"],
)
# A batch that Imo failed entirely is put back this many times before its patients are
# left for the next round.
MAX_BATCH_CLAIMS = 3
# Requests whose `sent_through` is recorded in one write before they leave: what a worker
# killed at the worst moment leaves `unconfirmed` beyond the requests in flight.
RESERVE_STEP = 250
# A request later than this after its limiter slot waits for a new one instead.
MAX_LATENESS_SECONDS = 0.010
# A request this close to its slot leaves at once: the event loop's timers are no finer
# than a millisecond, and at high rates a group's slots are microseconds apart (a sleep
# each would cost a turn of the loop). The limiter's 1% headroom covers what leaves early.
EARLINESS_SECONDS = 0.001
_MAX_BACKOFF_SECONDS = 300.0
# How long a paused switch (`all`, `channel=imo`) is trusted before it is read again, and
# how long a batch it stopped waits before it is looked at again.
SWITCH_RECHECK_SECONDS = 1.0


class LeaseLost(Exception):
    """Another worker took the batch over: this one's lease ran out."""


def _identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _BatchWriter:
    """The answers of one batch not yet written, and the writes (serial, in background).

    Each write renews the lease; with nothing to write it is renewed every third of it.
    """

    runner: InvitationRunner
    claim: ClaimedBatch
    authorizations: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    skip_ids: list[str] = field(default_factory=list)
    known_answers: int = 0
    error: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _last_write: float = field(default_factory=time.monotonic)

    def add(self, answer: rules.Answer, at: datetime) -> None:
        if answer.outcome in rules.AUTHORIZATION_ANSWERS:
            self.authorizations[answer.patient_id] = (answer.outcome, at)
            self.known_answers += 1
        else:
            self.skip_ids.append(answer.patient_id)
        self.counters[answer.outcome] += 1

    @property
    def failed(self) -> bool:
        return self.error is not None

    def tick(self) -> None:
        """Start a write if one is due and none is running."""
        if self.error is not None or (self._task is not None and not self._task.done()):
            return
        waited = time.monotonic() - self._last_write
        pending = len(self.authorizations) + len(self.skip_ids)
        renew = self.runner.settings.imo_invitation_lease_seconds / 3
        if (pending and waited >= self.runner.flush_interval) or waited >= renew:
            self._task = asyncio.create_task(self._write_guarded("claimed", None))

    async def reserve(self, through: str) -> bool:
        """Record (committed) that requests up to patient `through` may leave. False, with
        `error` set, when the batch was taken over or the write failed: send nothing."""
        try:
            async with self.runner.sessionmaker() as session:
                held = await imo_repository.reserve(
                    session,
                    self.claim.batch_id,
                    self.claim.owner,
                    through,
                    self.runner.settings.imo_invitation_lease_seconds,
                )
                await session.commit()
        except Exception as exc:
            self.error = exc
            return False
        if not held:
            self.error = LeaseLost(f"batch {self.claim.batch_id} was taken over")
        return held

    async def finish(self, state: str, not_before: datetime | None) -> None:
        """Write what is left and move the batch to `state`. Raises what a write raised."""
        if self._task is not None:
            await asyncio.wait([self._task])
        if self.error is not None:
            raise self.error
        await self._write(state, not_before)

    async def _write_guarded(self, state: str, not_before: datetime | None) -> None:
        try:
            await self._write(state, not_before)
        except Exception as exc:
            self.error = exc

    async def _write(self, state: str, not_before: datetime | None) -> None:
        rec = BatchRecord(
            authorizations=self.authorizations,
            counters=self.counters,
            skip_ids=self.skip_ids,
            state=state,
            not_before=not_before,
        )
        self.authorizations, self.counters, self.skip_ids = {}, Counter(), []
        self._last_write = time.monotonic()
        async with self.runner.sessionmaker() as session:
            subscribed = await imo_repository.record(
                session,
                self.claim.batch_id,
                self.claim.owner,
                self.runner.settings.imo_invitation_lease_seconds,
                rec,
            )
            if subscribed is None:
                await session.rollback()
                raise LeaseLost(f"batch {self.claim.batch_id} was taken over")
            await imo_service.found_subscribed(session, subscribed)
            await session.commit()
        for outcome, count in rec.counters.items():
            INVITATIONS.labels(outcome).inc(count)


@dataclass(frozen=True, slots=True)
class _Pass:
    """One pass over patients: those who failed transiently, and why it stopped early."""

    transient: list[tuple[Candidate, float | None]]
    # "window", "paused" (a switch), "stopped", "failed" (a write), "error" (pacing)
    halted: str | None = None


class _Pacer:
    """Hands out one pass's patients in id order, each at its own slot of the shared
    limit (never before it: no burst above the rate in any second, whatever the group).

    Patients leave in groups of at most `RESERVE_STEP`: before a group's first patient is
    handed out, the group's limiter slots are reserved, on a first pass its `sent_through`
    committed, and the window checked. Both reservations of the next group are made while
    this one is sent (of the first, while the lanes wait for permits), keeping Redis's and
    the database's latency off the sending path. `halted` says why it stopped early:
    "stopped", "failed" (a write), "window", "paused" (a switch) or "error" (the limiter).
    """

    def __init__(
        self,
        runner: InvitationRunner,
        patients: Sequence[Candidate],
        claim: ClaimedBatch,
        writer: _BatchWriter,
        stop: asyncio.Event,
        *,
        first: bool,
    ) -> None:
        self.runner = runner
        self.patients = patients
        self.claim = claim
        self.writer = writer
        self.stop = stop
        self.first = first
        self.halted: str | None = None
        self._busy: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._slot_seconds = 1.0 / runner.limiter.rate_per_second
        self._group_size = min(runner.limiter.max_chunk, RESERVE_STEP)
        self._late_allowance = runner.limiter.rate_per_second * MAX_LATENESS_SECONDS
        self._next = 0  # index of the next patient handed out
        self._group_end = 0  # index past the current group
        self._group_start = 0
        self._first_slot = 0.0  # when the current group's first patient may leave
        self._sent_at = runner.clock()
        self._ahead: asyncio.Task[tuple[int, float, bool]] | None = None

    def halt(self, reason: str) -> None:
        """Hand out no more patients (unless already halted or all handed out)."""
        if self.halted is None and self._next < len(self.patients):
            self.halted = reason

    async def take(self) -> tuple[Candidate, datetime] | None:
        """The next patient, at its slot, and when its group left; None: no more.

        No lock: handing a patient out is synchronous, and the awaits that change the
        pacer (opening a group, new slots for a late group) run in one lane while the
        others wait for it on one future, all woken at once. (Through an asyncio.Lock the
        lanes formed a convoy, one hand-over per turn of the event loop: measured, 35 µs
        of CPU per invitation.) A lane sleeps until its own slot after taking its patient.
        """
        while True:
            if self.halted is not None or self._next >= len(self.patients):
                return None
            if self._busy is not None:
                await asyncio.shield(self._busy)
                continue
            index = self._next
            if index == self._group_end:
                await self._exclusively(self._open_group())
                continue
            wait = self._first_slot + (index - self._group_start) * self._slot_seconds
            wait -= self._loop.time()
            if wait < -MAX_LATENESS_SECONDS and self._group_end - index > self._late_allowance:
                # Nor long after (a starved process, Imo slow to answer): late requests
                # sent together would crowd one of Imo's seconds. The missed slots are
                # given up; the rest of the group takes new ones. What is left of a group
                # within MAX_LATENESS_SECONDS worth of slots (`_late_allowance`) goes as
                # it is: that crowding is no more than a request that late would add.
                await self._exclusively(self._new_slots(index))
                continue
            self._next = index + 1
            sent_at = self._sent_at
            if wait > EARLINESS_SECONDS:
                await asyncio.sleep(wait)
            return self.patients[index], sent_at

    async def _exclusively(self, work: Coroutine[Any, Any, None]) -> None:
        busy = self._busy = self._loop.create_future()
        try:
            await work
        except Exception:
            # Redis (the limiter) failing: the lanes stop taking patients, and the answers
            # of those sent are written before the batch is put back (`_invite_batch`).
            log.exception("invitation pacing failed", extra={"batch_id": self.claim.batch_id})
            sentry_sdk.capture_exception()
            self.halted = "error"
        finally:
            self._busy = None
            busy.set_result(None)

    async def _new_slots(self, index: int) -> None:
        delay = await self.runner.limiter.reserve(self._group_end - index, priority="low")
        self._first_slot = self._loop.time() + delay
        self._group_start = index

    def start(self) -> None:
        """Prepare the first group now, while the lanes wait for their permits."""
        if self.patients:
            self._ahead = asyncio.create_task(self._prepare(0))

    async def _prepare(self, start: int) -> tuple[int, float, bool]:
        """Reserve the group from `start`: its end, its first slot (on the loop's clock)
        and whether its `sent_through` is committed (always true on a retry pass)."""
        end = min(start + self._group_size, len(self.patients))
        delay = await self.runner.limiter.reserve(end - start, priority="low")
        first_slot = self._loop.time() + delay
        held = await self.writer.reserve(self.patients[end - 1].id) if self.first else True
        return end, first_slot, held

    async def _open_group(self) -> None:
        if self.stop.is_set():
            self.halted = "stopped"
            return
        if self.writer.failed:
            self.halted = "failed"
            return
        start = self._next
        prepared, self._ahead = self._ahead, None
        end, first_slot, held = await (prepared or self._prepare(start))
        if not held:
            self.halted = "failed"
            return
        self._sent_at = self.runner.clock()
        if not self.runner.window.contains(self._sent_at, self.claim.time_zone):
            self.halted = "window"
            return
        if await self.runner.paused() is not None:
            self.halted = "paused"
            return
        if end < len(self.patients):
            # The next group is reserved (slots, write-ahead) while this one is sent.
            self._ahead = asyncio.create_task(self._prepare(end))
        self._group_start, self._group_end, self._first_slot = start, end, first_slot

    async def settle(self) -> None:
        """Wait for a group still being prepared (the batch's last write must follow its
        write-ahead); a failure there is logged: none of its patients was sent."""
        if self._ahead is None:
            return
        await asyncio.wait([self._ahead])
        if not self._ahead.cancelled() and (error := self._ahead.exception()) is not None:
            log.warning(
                "preparing an invitation group failed",
                exc_info=error,
                extra={"batch_id": self.claim.batch_id},
            )


class InvitationRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        imo: ImoChannel,
        limiter: RateLimiter,
        signer: TokenSigner,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        slots: int = 2,
        retry_delays: Sequence[float] = (1.0, 3.0),
        flush_interval: float = 0.5,
        pacing_error_backoff: float = 2.0,
        outage_backoff: float = 5.0,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.imo = imo
        self.limiter = limiter
        self.signer = signer
        self.clock = clock
        self.slots = slots
        self.retry_delays = tuple(retry_delays)
        self.flush_interval = flush_interval
        # The first pause after the limiter (Redis) failed, or Imo failed a whole batch;
        # doubled while it lasts, up to _MAX_BACKOFF_SECONDS.
        self.pacing_error_backoff = pacing_error_backoff
        self.outage_backoff = outage_backoff
        self.window = MessagingWindow(
            settings.messaging_window_start, settings.messaging_window_end
        )
        self.identity = _identity()
        self._semaphore = asyncio.Semaphore(settings.imo_invitation_concurrency)
        self._wake = asyncio.Event()
        self._templates: dict[str, PreparedTemplate] = {}
        self._by_locale: dict[str, tuple[PreparedTemplate, str]] = {}
        self._backoff = 0.0
        self._allowed_all = settings.messages_everyone
        self._switches: tuple[float, Scope | None] = (-SWITCH_RECHECK_SECONDS, None)
        # The round `work` is on: its pauses are recorded against it.
        self._round_id: int | None = None

    async def paused(self) -> Scope | None:
        """The paused switch that stops invitations (`all` or `channel=imo`), read at most
        every SWITCH_RECHECK_SECONDS."""
        read_at, scope = self._switches
        if time.monotonic() - read_at >= SWITCH_RECHECK_SECONDS:
            async with self.sessionmaker() as session:
                scope = Switchboard(
                    await switch_repository.paused_scopes(session)
                ).holds_invitations()
            self._switches = (time.monotonic(), scope)
        return scope

    # ------------------------------------------------------------------ loops

    def wake(self) -> None:
        """Look for a round now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """The worker's loop: work on whatever round is running until `stop` is set."""
        poll = self.settings.imo_invitation_poll_seconds
        while not stop.is_set():
            delay = poll
            try:
                async with self.sessionmaker() as session:
                    round_id = await imo_repository.running_round_id(session)
                if round_id is not None:
                    idle = await self.work(round_id, stop)
                    if idle.paused_until is not None:
                        # Nothing to do before the opening; look now and then all the same.
                        until = (idle.paused_until - self.clock()).total_seconds()
                        delay = min(max(until, 0.05), max(poll, 60.0))
            except Exception:
                log.exception("invitation round work failed; retrying")
                sentry_sdk.capture_exception()
                delay = max(poll, 2.0)
            await self._sleep(stop, delay, wakeable=True)

    async def work(self, round_id: int, stop: asyncio.Event) -> Idle:
        """Work on round `round_id` until this process can claim nothing more of it;
        returns why (completed, paused until a window opens, the rest held by others)."""
        await self._load_templates()
        self._round_id = round_id
        idles = await asyncio.gather(*(self._slot(round_id, stop) for _ in range(self.slots)))
        for reason in ("completed", "gone", "paused", "switch"):
            for idle in idles:
                if idle.reason == reason:
                    return idle
        return idles[0]

    async def _slot(self, round_id: int, stop: asyncio.Event) -> Idle:
        while not stop.is_set():
            if self._backoff:
                await self._sleep(stop, self._backoff)
            if (scope := await self.paused()) is not None:
                log.info("invitation round paused by a switch", extra={"scope": str(scope)})
                until = self.clock() + timedelta(seconds=SWITCH_RECHECK_SECONDS)
                await self._note_pause("switch", f"switch {scope} is paused", until)
                return Idle("switch", until)
            claim = await self._claim(round_id)
            if isinstance(claim, Idle):
                if claim.reason == "again":
                    continue
                return claim
            try:
                await self._process(claim, stop)
            except LeaseLost:
                log.warning("invitation batch taken over", extra={"batch_id": claim.batch_id})
            except Exception:
                # The lease runs out and another worker (or this one) takes it over.
                log.exception("invitation batch failed", extra={"batch_id": claim.batch_id})
                sentry_sdk.capture_exception()
                await self._sleep(stop, 2.0)
        return Idle("busy")

    async def _note_pause(self, reason: str, detail: str, until: datetime | None) -> None:
        """Record why the round waits, for the dashboard: a failure to record is logged,
        never stops the round."""
        if self._round_id is None:
            return
        try:
            async with self.sessionmaker() as session:
                await imo_repository.record_pause(
                    session, self._round_id, reason, detail, self.clock(), until
                )
                await session.commit()
        except Exception:
            log.exception("could not record an invitation round's pause")
            sentry_sdk.capture_exception()

    async def _claim(self, round_id: int) -> ClaimedBatch | Idle:
        async with self.sessionmaker() as session:
            claim = await imo_service.claim_batch(
                session,
                round_id,
                owner=f"{self.identity}:{uuid.uuid4().hex[:8]}",
                now=self.clock(),
                window=self.window,
                settings=self.settings,
            )
            await session.commit()
        if isinstance(claim, Idle) and claim.reason == "completed":
            log.info("invitation round completed", extra={"round_id": round_id})
        return claim

    # ------------------------------------------------------------------ one batch

    async def _process(self, claim: ClaimedBatch, stop: asyncio.Event) -> None:
        writer = _BatchWriter(self, claim)
        ticker = asyncio.create_task(self._tick(writer))
        try:
            state, not_before = await self._invite_batch(claim, writer, stop)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if writer.failed and isinstance(writer.error, LeaseLost):
            raise writer.error
        # A shutdown must not lose what was answered: finish the write even if cancelled.
        await asyncio.shield(writer.finish(state, not_before))

    async def _tick(self, writer: _BatchWriter) -> None:
        while True:
            await asyncio.sleep(min(self.flush_interval, 0.25))
            writer.tick()

    async def _invite_batch(
        self, claim: ClaimedBatch, writer: _BatchWriter, stop: asyncio.Event
    ) -> tuple[str, datetime | None]:
        """Invite the batch's patients; returns the batch's next state (and not-before)."""
        patients = claim.patients
        if not self._allowed_all:
            allowed = []
            for patient in patients:
                if self.settings.recipient_allowed(patient.mobile_e164):
                    allowed.append(patient)
                else:
                    writer.add(rules.Answer(patient.id, "denied"), self.clock())
            patients = allowed

        current = _Pass(transient=[(p, None) for p in patients])
        retry_delays = (0.0, *self.retry_delays)
        for attempt, delay in enumerate(retry_delays):
            if not current.transient:
                break
            if attempt:
                hinted = max((after or 0.0 for _, after in current.transient), default=0.0)
                if hinted > 0:
                    await self._note_pause(
                        "rate_limit",
                        "Imo asked to wait before retrying (Retry-After)",
                        self.clock() + timedelta(seconds=max(delay, min(hinted, 60.0))),
                    )
                await self._sleep(stop, max(delay, min(hinted, 60.0)))
            current = await self._send_pass(
                [p for p, _ in current.transient], claim, writer, stop, first=attempt == 0
            )
            if current.halted is not None:
                break

        if current.halted == "window":
            now = self.clock()
            opening = self.window.next_moment(now, claim.time_zone)
            closed = f"messaging window closed in {claim.time_zone}"
            await self._note_pause("window", closed, opening)
            return "waiting", opening
        if current.halted == "paused":
            until = self.clock() + timedelta(seconds=SWITCH_RECHECK_SECONDS)
            scope = await self.paused()
            await self._note_pause("switch", f"switch {scope or 'imo'} is paused", until)
            return "waiting", until
        if current.halted == "error":
            # Pacing failed (Redis, the shared limit, unreachable): the answers so far are
            # written; the batch waits, and this worker backs off, as for an Imo outage.
            self._backoff = min(
                max(self._backoff * 2, self.pacing_error_backoff), _MAX_BACKOFF_SECONDS
            )
            until = self.clock() + timedelta(seconds=self._backoff)
            await self._note_pause("errors", "the shared rate limiter could not be reached", until)
            return "waiting", until
        if current.halted is not None:
            # Stopped (shutdown) or a write failed: what is left is taken over at once.
            return "waiting", None
        if current.transient:
            if writer.known_answers == 0 and claim.claims < MAX_BATCH_CLAIMS:
                # Imo failed every request: an outage. Put the batch back and back off
                # rather than skip its patients for the rest of the round.
                self._backoff = min(
                    max(self._backoff * 2, self.outage_backoff), _MAX_BACKOFF_SECONDS
                )
                log.warning(
                    "Imo failed a whole invitation batch; backing off",
                    extra={"batch_id": claim.batch_id, "backoff_seconds": self._backoff},
                )
                until = self.clock() + timedelta(seconds=self._backoff)
                await self._note_pause("errors", "Imo failed every request of a batch", until)
                return "waiting", until
            now = self.clock()
            for patient, _ in current.transient:
                writer.add(rules.Answer(patient.id, "transient"), now)
        self._backoff = 0.0
        return "done", None

    async def _send_pass(
        self,
        patients: Sequence[Candidate],
        claim: ClaimedBatch,
        writer: _BatchWriter,
        stop: asyncio.Event,
        *,
        first: bool,
    ) -> _Pass:
        """Send one request to each of `patients` (in id order), each at its own slot of
        the shared limit. The first pass records `sent_through` before each group leaves;
        retries resend only requests that Imo failed, all of them recorded already.

        Lanes (no task per request) take the patients from one `_Pacer`, each lane holding
        one of the process's `IMO_INVITATION_CONCURRENCY` permits while it lives: when
        this batch's lanes run dry, the next batch's lanes take their permits over."""
        transient: list[tuple[Candidate, float | None]] = []
        pacer = _Pacer(self, patients, claim, writer, stop, first=first)

        async def lane() -> None:
            async with self._semaphore:
                while (taken := await pacer.take()) is not None:
                    patient, sent_at = taken
                    result: str | BaseException
                    try:
                        result = (await self.imo.invite(self._invitation(patient))).status
                    except Exception as exc:  # channel errors, and adapter bugs: never lose it
                        result = exc
                        report_failure(ChannelName.IMO, exc)
                    answer = rules.answer_of(patient.id, result)
                    if answer.outcome == "transient":
                        transient.append((patient, answer.retry_after))
                    else:
                        writer.add(answer, sent_at)

        count = min(len(patients), self.settings.imo_invitation_concurrency)
        pacer.start()
        lanes = [asyncio.create_task(lane()) for _ in range(count)]
        try:
            await asyncio.wait(lanes)
        finally:
            # Cancelled (a shutdown): nothing more leaves, and the answers of the requests
            # in flight still come back to be written. Everything settles before the
            # batch's last write, which clears `sent_through`.
            pacer.halt("stopped")
            await asyncio.wait(lanes)
            await pacer.settle()
        for finished in lanes:
            if (error := finished.exception()) is not None:
                raise error
        return _Pass(transient=transient, halted=pacer.halted)

    # ------------------------------------------------------------------ helpers

    def _invitation(self, patient: Candidate) -> Invitation:
        template, action = self._template_of(patient.locale)
        rendered = template.render({"patient_name": patient.full_name})
        return Invitation(
            phone_e164=patient.mobile_e164,
            text=rendered.body,
            title=rendered.title,
            action=action,
            recipient_name=patient.full_name,
            callback_url=callback_urls.imo_invitation_url(self.settings, self.signer, patient.id),
        )

    def _template_of(self, locale: str) -> tuple[PreparedTemplate, str]:
        """The invitation text for `locale` and its button label: once per locale, then a
        dictionary look-up."""
        found = self._by_locale.get(locale)
        if found is None:
            template = next(
                self._templates[candidate]
                for candidate in locale_candidates(locale)
                if candidate in self._templates
            )
            found = self._by_locale[locale] = (template, rules.accept_label(template.locale))
        return found

    async def _load_templates(self) -> None:
        """Raises LookupError without an `en` text, ValueError for a text that uses any
        variable but `patient_name` (every invitation would fail)."""
        async with self.sessionmaker() as session:
            found = await template_repository.with_keys(session, [INVITATION_TEMPLATE])
            self._templates = {
                row.locale: PreparedTemplate.parse(row.key, row.locale, row.title, row.body)
                for row in found
            }
        self._by_locale = {}
        if "en" not in self._templates:
            raise LookupError(f"template '{INVITATION_TEMPLATE}' has no 'en' text to fall back on")
        for template in self._templates.values():
            if unknown := sorted(template.needed - {"patient_name"}):
                raise ValueError(
                    f"template '{INVITATION_TEMPLATE}' ({template.locale}) uses variables an "
                    f"invitation does not have: {', '.join(unknown)} (only patient_name)"
                )

    async def _sleep(self, stop: asyncio.Event, seconds: float, *, wakeable: bool = False) -> None:
        waits = [asyncio.ensure_future(stop.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            if wakeable:
                self._wake.clear()


def build_invitation_runner(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    limiter_redis: Redis,
    http: aiohttp.ClientSession,
) -> InvitationRunner | None:
    """The runner of the worker, `notify invite` and the benchmark: the registry's Imo
    channel on `http` and the Imo account's one limit, shared with reminders (which go
    first). None when Imo is not configured."""
    imo = channel_registry.imo_channel(settings, http)
    if imo is None:
        return None
    return InvitationRunner(
        settings=settings,
        sessionmaker=sessionmaker,
        imo=imo,
        limiter=channel_registry.build_limiter(ChannelName.IMO, settings, limiter_redis),
        signer=TokenSigner(settings.secret_key.get_secret_value()),
        retry_delays=(
            settings.imo_invitation_retry_seconds,
            3 * settings.imo_invitation_retry_seconds,
        ),
        outage_backoff=settings.imo_invitation_outage_backoff_seconds,
    )
