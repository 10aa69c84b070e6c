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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sentry_sdk
from prometheus_client import Counter as PrometheusCounter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks import urls
from app.channels.base import ChannelError, Invitation, PermanentChannelError
from app.channels.imo import ImoChannel
from app.config import Settings
from app.imo import repository as imo_repository
from app.imo import rules
from app.imo import service as imo_service
from app.imo.repository import BatchRecord, Candidate
from app.imo.service import ClaimedBatch, Idle
from app.models import Template
from app.notifications.window import MessagingWindow
from app.observability import report_unexpected
from app.ratelimit import RateLimiter
from app.security import TokenSigner
from app.templates.service import RenderedTemplate, locale_candidates, render_text

log = logging.getLogger(__name__)

INVITATION_TEMPLATE = "imo_invitation.basic"
INVITATIONS = PrometheusCounter(
    "notify_imo_invitations_total", "Imo invitations sent by rounds, by result", ["result"]
)
# A batch that Imo failed entirely is put back this many times before its patients are
# left for the next round.
MAX_BATCH_CLAIMS = 3
# Requests whose `sent_through` is recorded in one write before they leave: what a worker
# killed at the worst moment leaves `unconfirmed` beyond the requests in flight.
RESERVE_STEP = 250
# A request later than this after its limiter slot waits for a new one instead.
MAX_LATENESS_SECONDS = 0.010
_MAX_BACKOFF_SECONDS = 300.0


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
        INVITATIONS.labels(answer.outcome).inc()

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
            held = await imo_repository.record(
                session,
                self.claim.batch_id,
                self.claim.owner,
                self.runner.settings.imo_invitation_lease_seconds,
                rec,
            )
            if not held:
                await session.rollback()
                raise LeaseLost(f"batch {self.claim.batch_id} was taken over")
            await session.commit()


@dataclass(frozen=True, slots=True)
class _Pass:
    """One pass over patients: those who failed transiently, and why it stopped early."""

    transient: list[tuple[Candidate, float | None]]
    halted: str | None = None  # "window", "stopped", "failed"


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
        self.window = MessagingWindow(
            settings.messaging_window_start, settings.messaging_window_end
        )
        self.identity = _identity()
        self._semaphore = asyncio.Semaphore(settings.imo_invitation_concurrency)
        self._wake = asyncio.Event()
        self._templates: dict[str, Template] = {}
        self._by_locale: dict[str, Template] = {}
        self._backoff = 0.0
        self._allowed_all = settings.recipient_allowed("", imo.base_url)

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
        idles = await asyncio.gather(*(self._slot(round_id, stop) for _ in range(self.slots)))
        for reason in ("completed", "gone", "paused"):
            for idle in idles:
                if idle.reason == reason:
                    return idle
        return idles[0]

    async def _slot(self, round_id: int, stop: asyncio.Event) -> Idle:
        while not stop.is_set():
            if self._backoff:
                await self._sleep(stop, self._backoff)
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
                if self.settings.recipient_allowed(patient.mobile_e164, self.imo.base_url):
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
                await self._sleep(stop, max(delay, min(hinted, 60.0)))
            current = await self._send_pass(
                [p for p, _ in current.transient], claim, writer, stop, first=attempt == 0
            )
            if current.halted is not None:
                break

        if current.halted == "window":
            now = self.clock()
            return "waiting", self.window.next_moment(now, claim.time_zone)
        if current.halted is not None:
            # Stopped (shutdown) or a write failed: what is left is taken over at once.
            return "waiting", None
        if current.transient:
            if writer.known_answers == 0 and claim.claims < MAX_BATCH_CLAIMS:
                # Imo failed every request: an outage. Put the batch back and back off
                # rather than skip its patients for the rest of the round.
                self._backoff = min(max(self._backoff * 2, 5.0), _MAX_BACKOFF_SECONDS)
                log.warning(
                    "Imo failed a whole invitation batch; backing off",
                    extra={"batch_id": claim.batch_id, "backoff_seconds": self._backoff},
                )
                return "waiting", self.clock() + timedelta(seconds=self._backoff)
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
        retries resend only requests that Imo failed, all of them recorded already."""
        transient: list[tuple[Candidate, float | None]] = []
        tasks: set[asyncio.Task[None]] = set()
        halted: str | None = None
        loop = asyncio.get_running_loop()
        slot_seconds = 1.0 / self.limiter.rate_per_second
        group_size = min(self.limiter.max_chunk, RESERVE_STEP)

        async def invite(patient: Candidate, sent_at: datetime) -> None:
            result: str | BaseException
            try:
                result = (await self.imo.invite(self._invitation(patient))).status
            except Exception as exc:  # channel errors, and adapter bugs: never lose the row
                result = exc
                self._report(exc)
            finally:
                self._semaphore.release()
            answer = rules.answer_of(patient.id, result)
            if answer.outcome == "transient":
                transient.append((patient, answer.retry_after))
            else:
                writer.add(answer, sent_at)

        groups = [patients[i : i + group_size] for i in range(0, len(patients), group_size)]
        # The write-ahead of the group to send next, started while the one before is sent:
        # the database's latency stays off the sending path (it widens the crash window
        # by one group, whose requests never left).
        ahead: asyncio.Task[bool] | None = None
        try:
            for number, group in enumerate(groups):
                if stop.is_set():
                    halted = "stopped"
                    break
                if writer.failed:
                    halted = "failed"
                    break
                delay = await self.limiter.reserve(len(group), priority="low")
                first_slot = loop.time() + delay
                now = self.clock()
                if not self.window.contains(now, claim.time_zone):
                    halted = "window"
                    break
                if first:
                    held = await (ahead or writer.reserve(group[-1].id))
                    ahead = None
                    if not held:
                        halted = "failed"
                        break
                    if number + 1 < len(groups):
                        ahead = asyncio.create_task(writer.reserve(groups[number + 1][-1].id))
                for index, patient in enumerate(group):
                    await self._semaphore.acquire()
                    # Each request at its own slot, never before: no burst above the rate
                    # in any second, whatever the group size.
                    wait = first_slot + index * slot_seconds - loop.time()
                    if wait < -MAX_LATENESS_SECONDS:
                        # Nor long after (a starved process, Imo slow to answer): late
                        # requests sent together would crowd one of Imo's seconds. The
                        # missed slots are given up; the rest of the group takes new ones.
                        delay = await self.limiter.reserve(len(group) - index, priority="low")
                        first_slot = loop.time() + delay - index * slot_seconds
                        wait = delay
                    if wait > 0:
                        await asyncio.sleep(wait)
                    task = asyncio.create_task(invite(patient, now))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            # Settled before the batch's last write, which clears `sent_through`.
            if ahead is not None:
                await asyncio.wait([ahead])
            if tasks:
                await asyncio.wait(tasks)
        return _Pass(transient=transient, halted=halted)

    # ------------------------------------------------------------------ helpers

    def _invitation(self, patient: Candidate) -> Invitation:
        rendered = self._render(patient)
        return Invitation(
            phone_e164=patient.mobile_e164,
            text=rendered.body,
            title=rendered.title,
            action=rules.accept_label(rendered.locale),
            recipient_name=patient.full_name,
            callback_url=urls.imo_invitation_url(self.settings, self.signer, patient.id),
        )

    def _render(self, patient: Candidate) -> RenderedTemplate:
        template = self._by_locale.get(patient.locale)
        if template is None:
            # Once per locale: the hot path is a dictionary look-up.
            template = next(
                self._templates[locale]
                for locale in locale_candidates(patient.locale)
                if locale in self._templates
            )
            self._by_locale[patient.locale] = template
        return render_text(
            template.key,
            template.locale,
            template.title,
            template.body,
            {"patient_name": patient.full_name},
        )

    async def _load_templates(self) -> None:
        async with self.sessionmaker() as session:
            found = await session.scalars(
                select(Template).where(Template.key == INVITATION_TEMPLATE)
            )
            self._templates = {template.locale: template for template in found}
        self._by_locale = {}
        if "en" not in self._templates:
            raise LookupError(f"template '{INVITATION_TEMPLATE}' has no 'en' text to fall back on")

    def _report(self, error: Exception) -> None:
        if isinstance(error, PermanentChannelError) and error.unexpected:
            report_unexpected("imo", error.message, error.detail)
        elif not isinstance(error, ChannelError):
            log.error("invitation failed in our own code", exc_info=error)
            sentry_sdk.capture_exception(error)

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
