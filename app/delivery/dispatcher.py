"""The send loop: claim due notifications in batches, send, write the results back.

Every worker process runs one. A batch costs a handful of statements whatever its size:
claim (1), per round of channels: insert attempts (1), record answers (1), settle (1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sentry_sdk
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import callback_urls
from app.channels import registry as channel_registry
from app.channels.base import (
    Channel,
    ChannelName,
    OutgoingMessage,
    SendResult,
    TransientChannelError,
)
from app.channels.reporting import report_failure
from app.config import Settings
from app.consent import service as consent_service
from app.db.session import transient_database_error
from app.delivery import policy
from app.delivery import repository as delivery_repository
from app.delivery.loop_guard import LoopGuard
from app.delivery.types import ClaimedNotification, Outcome, SendOn
from app.notifications.window import MessagingWindow
from app.observability import ATTEMPTS
from app.ratelimit import RateLimiter
from app.security import TokenSigner
from app.states import (
    ADDRESS_CHANNELS,
    ATTEMPT_PROVES,
    REACHED_STATUSES,
    AttemptStatus,
    NotificationState,
)
from app.switches import repository as switch_repository
from app.switches.scope import Switchboard
from app.webhooks import service as webhook_service

log = logging.getLogger(__name__)
S = NotificationState

# How long a round waits for PostgreSQL to come back before giving up on writing down
# the providers' answers it holds (which then end `unconfirmed`, via the sweeper).
WRITE_BACK_RETRY_SECONDS = 30.0
# A provider's 429 without a Retry-After pauses its account for this long.
THROTTLE_PAUSE_SECONDS = 1.0
# How often each worker looks for claims whose lease ran out (a dead worker's batch): a
# query of the small `sending` index, so a claim is taken over within about a second of
# its lease running out.
TAKEOVER_INTERVAL_SECONDS = 1.0
# Leases that ran out this long ago are deleted by the sweeper (a claim naming a
# deleted lease is stale all the same).
FORGET_LEASES_AFTER_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class _NotSent:
    """A send that never reached the provider, and has no attempt.

    `ours` False: the sweeper released the claim meanwhile (another worker may hold it
    now), so this worker must neither send nor settle it. `expired`: it outlived its
    `expires_at` between the claim and its attempt, and ends `expired`.
    """

    reason: str
    ours: bool = True
    expired: bool = False


@dataclass(frozen=True, slots=True)
class _Send:
    notification: ClaimedNotification
    step: SendOn

    @property
    def channel(self) -> str:
        return self.step.chain[self.step.index]


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        channels: dict[str, Channel],
        limiters: dict[str, RateLimiter],
        signer: TokenSigner,
        loop_guard: LoopGuard,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.loop_guard = loop_guard
        self.sessionmaker = sessionmaker
        self.channels = channels
        self.limiters = limiters
        self.signer = signer
        self.clock = clock
        self.window = MessagingWindow(
            settings.messaging_window_start, settings.messaging_window_end
        )
        self._semaphore = asyncio.Semaphore(settings.dispatch_concurrency)
        self._taking = asyncio.Lock()
        # This process's lease on what it claims (`keep_lease`); without one (a
        # dispatcher driven directly, as in tests) claims are stale after
        # SENDING_STALE_AFTER_SECONDS instead.
        self.lease_id = uuid.uuid4()
        self._leasing = False
        self._lease_renewed = -float("inf")
        self._next_takeover = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; idle polls are `dispatch_idle_seconds` apart.

        Each loop also takes over, at most every TAKEOVER_INTERVAL_SECONDS per process,
        the claims of workers whose lease ran out.
        """
        while not stop.is_set():
            try:
                await self._take_over_if_due()
                claimed = await self.dispatch_once()
            except Exception:
                # PostgreSQL or Redis away: the batch released itself (`_handle`), or,
                # when even that failed, is taken over once this lease runs out.
                log.exception("dispatch batch failed; retrying")
                sentry_sdk.capture_exception()
                claimed = 0
                await _sleep_or_stop(stop, 2.0)
            if not claimed:
                # Only an empty claim means nothing is due: a short one (the last of the
                # due rows, or rows another loop's claim held locked) is followed by
                # another claim at once, not by an idle pause per batch.
                await _sleep_or_stop(stop, self.settings.dispatch_idle_seconds)

    async def keep_lease(self) -> None:
        """Hold this process's dispatch lease, renewed every third of
        DISPATCH_LEASE_SECONDS, until cancelled (after the dispatch loops have stopped:
        then `drop_lease`). While the lease is not fresh, no new batch is claimed."""
        self._leasing = True
        seconds = self.settings.dispatch_lease_seconds
        holder = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            began = time.monotonic()
            try:
                async with self.sessionmaker() as session:
                    await delivery_repository.renew_lease(session, self.lease_id, holder, seconds)
                    await session.commit()
                self._lease_renewed = began
                pause = seconds / 3
            except Exception as exc:  # PostgreSQL away: claims stop until it is back
                log.warning("could not renew the dispatch lease: %s", type(exc).__name__)
                pause = 1.0
            await asyncio.sleep(pause)

    async def drop_lease(self) -> None:
        """Give up the lease (a clean stop): anything still claimed under it is taken
        over by the other workers at once."""
        try:
            async with self.sessionmaker() as session:
                await delivery_repository.drop_lease(session, self.lease_id)
                await session.commit()
        except Exception as exc:
            log.warning("could not drop the dispatch lease: %s", type(exc).__name__)

    def _claim_lease(self) -> uuid.UUID | bool | None:
        """The lease to claim under: None without leasing; False while the lease is not
        known to be held for at least half of DISPATCH_LEASE_SECONDS more."""
        if not self._leasing:
            return None
        fresh = time.monotonic() - self._lease_renewed < self.settings.dispatch_lease_seconds / 2
        return self.lease_id if fresh else False

    async def _take_over_if_due(self) -> None:
        """Settle the claims of workers whose lease ran out (as the sweeper does): what
        had no attempt is due again at once, what had one ends `unconfirmed`."""
        if not self._leasing or time.monotonic() < self._next_takeover:
            return
        self._next_takeover = time.monotonic() + TAKEOVER_INTERVAL_SECONDS
        stale_before = self.clock() - timedelta(seconds=self.settings.sending_stale_after_seconds)
        async with self.sessionmaker() as session:
            requeued, unconfirmed = await _settle_stale(session, stale_before)
            await session.commit()
        if requeued or unconfirmed:
            log.warning(
                "took over the claims of a worker whose lease ran out",
                extra={"requeued": requeued, "unconfirmed": unconfirmed},
            )

    async def dispatch_once(self) -> int:
        """Claim and handle one batch; returns how many notifications were claimed."""
        lease = self._claim_lease()
        if lease is False:
            return 0
        assert not isinstance(lease, bool)
        async with self.sessionmaker() as session:
            # Read with every claim, never cached longer: a pause stops sending at each
            # worker's next batch.
            board = Switchboard(await switch_repository.paused_scopes(session))
            claimed = await delivery_repository.claim_due(
                session,
                self.settings.dispatch_batch_size,
                no_whatsapp_days=self.settings.whatsapp_retry_no_account_days,
                lease_id=lease,
                staff_time_zone=self.settings.staff_time_zone,
            )
            gateway_numbers = (
                await delivery_repository.gateway_numbers(session) if claimed else frozenset()
            )
            await session.commit()
        if not claimed:
            return 0
        try:
            await self._handle(claimed, board, gateway_numbers)
        except Exception:
            await self._release(claimed)
            raise
        return len(claimed)

    async def _handle(
        self,
        claimed: Sequence[ClaimedNotification],
        board: Switchboard,
        gateway_numbers: frozenset[str],
    ) -> None:
        """Send a claimed batch and settle it."""
        began = time.monotonic()
        now = self.clock()
        settled: dict[uuid.UUID, Outcome] = {}
        sends: list[_Send] = []
        available = set(self.channels)
        for notification in claimed:
            step = policy.first_step(
                notification,
                now=now,
                window=self.window,
                settings=self.settings,
                available=available,
                gateway_numbers=gateway_numbers,
            )
            if isinstance(step, SendOn):
                step = self._allowed(notification, step, board)
            if isinstance(step, SendOn):
                sends.append(_Send(notification, step))
            else:
                settled[notification.id] = step
        sends = await self._without_loops(sends, settled)
        outcomes: Counter[str] = Counter()
        # Each round tries one channel per notification; failures fall back at once.
        while sends:
            sends = await self._round(sends, settled, board)
            outcomes.update(_outcome_name(o) for o in settled.values() if o.state is not S.SENDING)
            settled = {}
        if settled:
            async with self.sessionmaker() as session:
                await delivery_repository.settle(session, settled)
                await webhook_service.notifications_changed(session, settled)
                await session.commit()
            outcomes.update(_outcome_name(o) for o in settled.values())
        _log_batch(len(claimed), outcomes, time.monotonic() - began)

    async def _release(self, claimed: Sequence[ClaimedNotification]) -> None:
        """A batch that failed mid-way, settled at once by this (live) worker: it renews
        its lease, so no other worker would take the batch over. When PostgreSQL is what
        failed this may fail too: the lease then runs out and the batch is taken over."""
        try:
            async with self.sessionmaker() as session:
                requeued, settled = await delivery_repository.release_batch(
                    session, [(n.id, n.claimed_at) for n in claimed]
                )
                await webhook_service.notifications_changed(session, settled)
                await session.commit()
        except Exception as exc:
            log.warning("could not release a failed batch: %s", type(exc).__name__)
            return
        log.warning(
            "released a failed batch",
            extra={"requeued": requeued, "unconfirmed": len(settled)},
        )

    def _allowed(
        self, notification: ClaimedNotification, step: SendOn, board: Switchboard
    ) -> Outcome | SendOn:
        """Not held by a paused switch; outside production, only allow-listed numbers
        reach a real provider."""
        name = step.chain[step.index]
        if board and (scope := board.holding(notification.country, notification.purpose, name)):
            return policy.held(notification, step, str(scope))
        recipient = _recipient(notification, name)
        if recipient is None:  # the chain was fixed before the contact changed
            return Outcome(
                S.DENIED,
                channel_chain=step.chain,
                channel_index=step.index,
                failure_reason=f"no {'email address' if name in ADDRESS_CHANNELS else 'mobile'}"
                " for this channel",
            )
        if self.settings.recipient_allowed(recipient):
            return step
        return Outcome(
            S.DENIED,
            channel_chain=step.chain,
            channel_index=step.index,
            failure_reason=f"not in ALLOWED_RECIPIENTS (APP_ENV={self.settings.app_env})",
        )

    async def _without_loops(
        self, sends: list[_Send], settled: dict[uuid.UUID, Outcome]
    ) -> list[_Send]:
        """The sends the loop guard lets through; the others end `duplicate`."""
        repeated = await self.loop_guard.duplicates(
            [
                (
                    s.notification.id,
                    _recipient(s.notification, s.channel) or "",
                    s.notification.body,
                )
                for s in sends
            ]
        )
        if not repeated:
            return sends
        reason = (
            f"loop guard: more than {self.loop_guard.limit} messages with this text to this "
            "number, each within 30 minutes of the previous"
        )
        for send in sends:
            if send.notification.id in repeated:
                settled[send.notification.id] = Outcome(
                    S.DUPLICATE,
                    channel_chain=send.step.chain,
                    channel_index=send.step.index,
                    failure_reason=reason,
                )
        log.warning("loop guard stopped %d messages", len(repeated))
        return [s for s in sends if s.notification.id not in repeated]

    async def _round(
        self, sends: Sequence[_Send], settled: dict[uuid.UUID, Outcome], board: Switchboard
    ) -> list[_Send]:
        attempt_ids: dict[uuid.UUID, int] = {}
        answers = await self._send_all(sends, attempt_ids)

        now = self.clock()
        results: list[delivery_repository.AttemptResult] = []
        fallbacks: list[_Send] = []
        downgrades: dict[str, str] = {}
        opt_outs: dict[str, str] = {}
        no_whatsapp: list[uuid.UUID] = []
        for send, answer in zip(sends, answers, strict=True):
            n = send.notification
            if isinstance(answer, _NotSent):
                if answer.expired:
                    settled[n.id] = Outcome(S.EXPIRED, failure_reason=policy.EXPIRED_REASON)
                elif answer.ours:
                    # Never handed to the provider: due again soon, on the same channel.
                    due = now + policy.backoff(0, self.settings, None)
                    settled[n.id] = Outcome(
                        S.SCHEDULED,
                        channel_chain=send.step.chain,
                        channel_index=send.step.index,
                        due_at=self.window.next_moment(due, n.time_zone),
                        retry_count=n.retry_count,
                        failure_reason=answer.reason,
                    )
                continue
            attempt_id = attempt_ids[n.id]
            if isinstance(answer, SendResult):
                ATTEMPTS.labels(send.channel, "sent").inc()
                results.append(
                    delivery_repository.AttemptResult(
                        attempt_id,
                        AttemptStatus.SENT,
                        answer.provider_message_id,
                        answer.provider_status,
                        None,
                        None,
                    )
                )
                settled[n.id] = Outcome(
                    S.SENT,
                    channel_chain=send.step.chain,
                    channel_index=send.step.index,
                    retry_count=n.retry_count,
                    sent_at=now,
                )
                continue
            unconfirmed = policy.maybe_sent(answer)
            ATTEMPTS.labels(
                send.channel, "unconfirmed" if unconfirmed else type(answer).__name__
            ).inc()
            report_failure(send.channel, answer)
            results.append(
                delivery_repository.AttemptResult(
                    attempt_id,
                    AttemptStatus.UNCONFIRMED if unconfirmed else AttemptStatus.FAILED,
                    None,
                    getattr(answer, "provider_status", None) or None,
                    getattr(answer, "code", None) or type(answer).__name__,
                    (getattr(answer, "message", "") or str(answer))[:500],
                )
            )
            # A patient's: a staff member has no Imo account or consent to record.
            downgrade = policy.imo_downgrade(send.channel, answer)
            if downgrade and n.patient_id is not None:
                downgrades[n.patient_id] = downgrade
            opted_out = policy.provider_opt_out(send.channel, answer)
            if opted_out and n.patient_id is not None:
                opt_outs[n.patient_id] = opted_out
            if policy.no_whatsapp_account(send.channel, answer):
                no_whatsapp.append(n.id)
            following = policy.after_error(
                n, send.step, answer, now=now, window=self.window, settings=self.settings
            )
            if isinstance(following, SendOn):
                following = self._allowed(n, following, board)
            if isinstance(following, SendOn):
                fallbacks.append(_Send(n, following))
                # Persist the step now: a crash before the next round must not resend
                # on the channel that already failed.
                settled[n.id] = Outcome(
                    S.SENDING,
                    channel_chain=following.chain,
                    channel_index=following.index,
                )
            else:
                settled[n.id] = following

        async def write_back(session: AsyncSession) -> None:
            stored = await delivery_repository.record_attempts(session, results)
            outcomes = self._reconcile(sends, attempt_ids, stored, settled)
            await delivery_repository.settle(session, outcomes)
            await webhook_service.notifications_changed(session, outcomes)
            await delivery_repository.downgrade_imo(session, downgrades)
            await consent_service.record_provider_opt_outs(session, opt_outs)
            await delivery_repository.mark_no_whatsapp(session, no_whatsapp)

        await self._retrying(write_back)
        return fallbacks

    async def _retrying(self, work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """Run one unit of work, retried while PostgreSQL is unreachable (a restart, a
        fail-over) or breaks a deadlock, for up to WRITE_BACK_RETRY_SECONDS.

        The messages are out already: their answers are worth waiting for, since a
        round that gives up leaves them `unconfirmed`. `work` must be idempotent.
        """
        deadline = time.monotonic() + WRITE_BACK_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                async with self.sessionmaker() as session:
                    await work(session)
                    await session.commit()
                return
            except (DBAPIError, OSError) as exc:
                if not transient_database_error(exc) or time.monotonic() > deadline:
                    raise
                log.warning("database unavailable; retrying the write-back: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _reconcile(
        self,
        sends: Sequence[_Send],
        attempt_ids: dict[uuid.UUID, int],
        stored: dict[int, str],
        settled: dict[uuid.UUID, Outcome],
    ) -> dict[uuid.UUID, Outcome]:
        """A callback that beat our own write decides: read/delivered stand, and a
        failure reported before we wrote `sent` falls back as it would have after."""
        for send in sends:
            outcome = settled.get(send.notification.id)
            if outcome is None or outcome.state is not S.SENT:
                continue
            status = stored.get(attempt_ids[send.notification.id])
            if status in REACHED_STATUSES:
                settled[send.notification.id] = Outcome(
                    ATTEMPT_PROVES[AttemptStatus(status)],
                    channel_chain=outcome.channel_chain,
                    channel_index=outcome.channel_index,
                    sent_at=outcome.sent_at,
                )
            elif status == AttemptStatus.FAILED:
                settled[send.notification.id] = policy.after_delivery_failure(
                    send.notification.imo_status,
                    send.step,
                    self.clock(),
                    "the provider reported the message failed",
                )
        return settled

    async def _send_all(
        self, sends: Sequence[_Send], attempt_ids: dict[uuid.UUID, int]
    ) -> list[SendResult | Exception | _NotSent]:
        """Send one round, filling `attempt_ids` as attempts are written.

        Each rate-limit chunk's attempts are written and committed just before that
        chunk goes out, not the round's all at once: a worker killed mid-round leaves
        `sending` (then `unconfirmed`) attempts only for what it had handed to a
        provider; the rest of its claim has no attempt and is requeued by the sweeper.
        """
        answers: list[SendResult | Exception | _NotSent] = [_NotSent("not sent")] * len(sends)
        expired: set[uuid.UUID] = set()
        by_channel: dict[str, list[int]] = defaultdict(list)
        for position, send in enumerate(sends):
            by_channel[send.channel].append(position)

        async def send_one(position: int) -> None:
            send = sends[position]
            try:
                message = self._message(send, attempt_ids[send.notification.id])
                answers[position] = await self.channels[send.channel].send(message)
            except Exception as exc:  # ChannelErrors, and adapter bugs: never lose the row
                answers[position] = exc
                if isinstance(exc, TransientChannelError) and exc.throttled:
                    await self._back_off(send.channel, exc.retry_after)
            finally:
                self._semaphore.release()

        async def begin(chunk: list[int]) -> None:
            async with self.sessionmaker() as session:
                written = await delivery_repository.insert_attempts(
                    session,
                    [
                        (
                            sends[p].notification.id,
                            sends[p].channel,
                            sends[p].notification.claimed_at,
                        )
                        for p in chunk
                    ],
                )
                await session.commit()
            for notification_id, attempt_id in written.items():
                if attempt_id is None:
                    expired.add(notification_id)
                else:
                    attempt_ids[notification_id] = attempt_id

        async def send_channel(channel: str, positions: list[int]) -> None:
            limiter = self.limiters[channel]
            # Half the in-flight budget per chunk: one half is on the wire while the
            # other's attempts are committed. A chunk of the whole budget would wait
            # for every send to finish first (measured: ratio 0.3 against 0.4-0.7).
            size = min(limiter.max_chunk, max(1, self.settings.dispatch_concurrency // 2))
            tasks = []
            try:
                for start in range(0, len(positions), size):
                    chunk = positions[start : start + size]
                    await limiter.acquire(len(chunk))
                    # One chunk at a time takes its permits and writes its attempts: two
                    # channels each holding part of the semaphore would deadlock.
                    async with self._taking:
                        for _ in chunk:
                            await self._semaphore.acquire()
                        try:
                            await begin(chunk)
                        except BaseException:
                            for _ in chunk:
                                self._semaphore.release()
                            raise
                    for position in chunk:
                        notification_id = sends[position].notification.id
                        if notification_id in attempt_ids:
                            tasks.append(asyncio.create_task(send_one(position)))
                            continue
                        self._semaphore.release()
                        if notification_id in expired:
                            answers[position] = _NotSent("expired", expired=True)
                        else:
                            answers[position] = _NotSent("claim lost to the sweeper", ours=False)
            except Exception as exc:
                # Redis (the rate limit) or PostgreSQL away: what has no attempt was not
                # sent and is due again; what went out is recorded after the gather.
                log.warning("round cut short: %s", type(exc).__name__)
                for position in positions:
                    notification_id = sends[position].notification.id
                    if notification_id not in attempt_ids and notification_id not in expired:
                        answers[position] = _NotSent(f"not sent: {type(exc).__name__}")
            await asyncio.gather(*tasks)

        await asyncio.gather(*(send_channel(c, p) for c, p in by_channel.items()))
        return answers

    async def _back_off(self, channel: str, retry_after: float | None) -> None:
        """A 429: every worker holds its sends on `channel` for the provider's
        Retry-After (at least THROTTLE_PAUSE_SECONDS), instead of hammering it."""
        try:
            await self.limiters[channel].pause(max(retry_after or 0.0, THROTTLE_PAUSE_SECONDS))
        except Exception as exc:  # Redis away: the per-message backoff still holds
            log.warning("could not pause %s: %s", channel, type(exc).__name__)

    def _message(self, send: _Send, attempt_id: int) -> OutgoingMessage:
        n = send.notification
        if send.channel == ChannelName.EMAIL:
            # No callback: bounces come back by email or the provider's event webhook.
            return OutgoingMessage(
                phone_e164=n.mobile_e164 or "",
                email=n.email or "",
                text=n.body,
                locale=n.locale,
                title=n.conversation_subject or n.title,
                callback_url="",
                recipient_name=n.full_name,
                reference=str(n.id),
                status_reference=str(attempt_id),
                conversation_id=n.conversation_id or "",
            )
        assert n.mobile_e164 is not None
        if send.channel == ChannelName.IMO:
            callback_url = callback_urls.imo_read_receipt_url(
                self.settings, self.signer, attempt_id
            )
        else:
            # The Cloud API reports on the app's one webhook instead, naming the attempt
            # by `status_reference`; Twilio, SMS or WhatsApp, calls this URL.
            callback_url = callback_urls.twilio_status_url(self.settings, attempt_id)
        return OutgoingMessage(
            phone_e164=n.mobile_e164,
            text=n.body,
            locale=n.locale,
            title=n.title,
            callback_url=callback_url,
            recipient_name=n.full_name,
            action=self.settings.imo_action_label if self.settings.imo_action_url else "",
            action_url=self.settings.imo_action_url,
            reference=str(n.id),
            status_reference=str(attempt_id),
            whatsapp_template=n.whatsapp_template,
            free_text_allowed=n.whatsapp_window_open and send.channel == ChannelName.WHATSAPP,
        )


def _recipient(n: ClaimedNotification, channel: str) -> str | None:
    """Who `channel` reaches: the email address, or the mobile number."""
    return n.email if channel in ADDRESS_CHANNELS else n.mobile_e164


def check_chains(settings: Settings) -> policy.ChainReport:
    """The start-up check of CHANNEL_CHAINS against the configured channels (run by the
    API and every worker): a step whose channel has no credentials is logged here, once,
    and skipped when sending. /readyz shows the same report."""
    report = policy.chain_report(settings, channel_registry.configured_channels(settings))
    if report.unconfigured_steps:
        log.warning(
            "channel chains name channels that are not configured; those steps are skipped",
            extra={"unconfigured": report.unconfigured, "steps": report.unconfigured_steps},
        )
    return report


def _outcome_name(outcome: Outcome) -> str:
    """`sent via imo`, `failed`, `scheduled` (put off): how a batch's summary counts."""
    if outcome.state is S.SENT and outcome.channel_chain:
        return f"sent via {outcome.channel_chain[outcome.channel_index]}"
    return str(outcome.state)


def _log_batch(claimed: int, outcomes: Counter[str], seconds: float) -> None:
    """One line a batch, readable in `notify dev`'s console and a field each in JSON:
    counts only, never a phone number or a text."""
    parts = ", ".join(f"{count} {name}" for name, count in outcomes.most_common())
    log.info(
        "dispatched %d: %s in %.0f ms",
        claimed,
        parts or "nothing settled",
        seconds * 1000,
        extra={"claimed": claimed, "outcomes": dict(outcomes), "ms": round(seconds * 1000)},
    )


async def _settle_stale(session: AsyncSession, stale_before: datetime) -> tuple[int, int]:
    """The stale claims settled in the caller's transaction -> (requeued, unconfirmed),
    with the `notification.*` events of those that end `sent` or beyond."""
    requeued, settled = await delivery_repository.sweep_stale_sending(session, stale_before)
    await webhook_service.notifications_changed(session, settled)
    return requeued, len(settled)


async def sweep(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> tuple[int, int]:
    """Settle what dead workers left in `sending` -> (requeued, unconfirmed): a safety
    net behind the live workers' own takeover of claims whose lease ran out."""
    stale_before = now - timedelta(seconds=settings.sending_stale_after_seconds)
    async with sessionmaker() as session:
        counts = await _settle_stale(session, stale_before)
        await delivery_repository.forget_old_leases(session, FORGET_LEASES_AFTER_SECONDS)
        # A batch that read a switch just before it was resumed may have held notifications
        # after the resume released the rest: they are released here.
        released = await switch_repository.release_held(session)
        await session.commit()
    if any(counts):
        log.warning("swept stale sending", extra={"requeued": counts[0], "unconfirmed": counts[1]})
    if released:
        log.warning("released notifications held by resumed switches", extra={"released": released})
    return counts


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
