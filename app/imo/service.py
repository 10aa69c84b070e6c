"""Imo authorisation rules shared by callbacks, dispatch and invitation rounds, and the
life of a round: start, plan, hand out batches, pause, complete, report.

A round is worked on by every worker process at once (`app.imo.runner`): each claims a
batch of one time zone's patients under the round's row lock, so claims are serial and
never overlap, while sending runs in parallel. PostgreSQL is the source of truth: the
per-zone cursors, the batches and their leases are rows, so a round survives any crash.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import Conflict
from app.imo import repository as imo_repository
from app.imo import rules
from app.imo.repository import Candidate
from app.models import ImoInvitationRound, Patient
from app.models.imo_authorization import IMO_AUTHORIZATION_STATUSES
from app.models.imo_invitation_batch import BATCH_COUNTERS
from app.notifications.window import MessagingWindow
from app.webhooks import service as webhook_service

# A claim scans at most this long for eligible patients before it lets others in.
CLAIM_SCAN_SECONDS = 1.0


class Accept(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"
    UNKNOWN_PATIENT = "unknown_patient"


async def mark_subscribed(
    session: AsyncSession, patient_id: str, *, invited_at: datetime | None = None
) -> Accept:
    """The patient accepted the invitation sent at `invited_at` (None: a token from
    before invitations carried their time). Idempotent.

    STALE, and nothing changes, when the patient's status moved away from `invited` or
    `subscribed` after that invitation (Imo said `no_imo_account` or `not_subscribed`
    since): an old accept, replayed or late, must not undo what is known now.
    """
    if await session.get(Patient, patient_id) is None:
        return Accept.UNKNOWN_PATIENT
    # `imo.subscribed` is owed when the status becomes `subscribed`: what it was is read
    # (locked) first, and only while an endpoint wants the event.
    before = None
    if await webhook_service.imo_subscription_wanted(session):
        before = await imo_repository.lock_authorization(session, patient_id)
    applied = await imo_repository.mark_subscribed(
        session, patient_id, datetime.now(UTC), invited_at=invited_at
    )
    if not applied:
        return Accept.STALE
    if before is not None and before[0] != "subscribed":
        await webhook_service.imo_subscribed(session, [(patient_id, before)])
    return Accept.APPLIED


async def found_subscribed(
    session: AsyncSession, subscribed: Sequence[tuple[str, tuple[str, str]]]
) -> None:
    """`imo.subscribed` for the patients a round's answers made subscribed (Imo said
    they already were), each keyed by their authorisation as it stood before, as an
    accept is: the round and an accept of the same invitation make one event."""
    if subscribed and await webhook_service.imo_subscription_wanted(session):
        await webhook_service.imo_subscribed(session, subscribed)


# ---------------------------------------------------------------------------- rounds


class RoundRunning(Conflict):
    """A round is running already: rounds never overlap."""

    code = "round_running"

    def __init__(self, round_id: int) -> None:
        super().__init__(
            f"invitation round {round_id} is running; a new one can start when it is over",
            details=[{"field": "round_id", "message": str(round_id)}],
        )
        self.round_id = round_id


class ImoNotConfigured(Conflict):
    code = "imo_not_configured"


async def start_round(
    session: AsyncSession,
    settings: Settings,
    *,
    trigger: str,
    now: datetime,
    limit: int | None = None,
    trigger_key: str | None = None,
) -> ImoInvitationRound:
    """Create a running round (flushed, not committed). Cheap: planning is the workers'.

    Raises RoundRunning when one runs, ImoNotConfigured without Imo credentials. A
    `trigger_key` used before returns that round instead (the daily schedule starts one
    round a day, however many workers ask).
    """
    if not (settings.imo_base_url and settings.imo_username):
        raise ImoNotConfigured("Imo is not configured: set IMO_BASE_URL and IMO_USERNAME")
    for _ in range(3):
        round_id = await imo_repository.insert_round(
            session,
            trigger=trigger,
            trigger_key=trigger_key,
            invite_limit=limit,
            reinvite_before=rules.reinvite_before(now, settings.imo_reinvite_after_days),
        )
        if round_id is not None:
            created = await session.get(ImoInvitationRound, round_id)
            assert created is not None
            return created
        if trigger_key is not None:
            existing = await imo_repository.round_by_trigger_key(session, trigger_key)
            if existing is not None:
                return existing
        running = await imo_repository.running_round_id(session)
        if running is not None:
            raise RoundRunning(running)
        # The running round ended between the two statements: try again.
    raise Conflict("could not start an invitation round; try again")


async def plan_round(session: AsyncSession, round_: ImoInvitationRound) -> None:
    """Count the round's candidates by time zone and open a cursor per zone. Idempotent;
    call with the round locked."""
    if round_.zones is not None:
        return
    counts = await imo_repository.candidates_by_zone(session, round_.reinvite_before)
    round_.zones = {zone: {"after": "", "exhausted": False} for zone in sorted(counts)}
    total = sum(counts.values())
    round_.candidates = min(total, round_.invite_limit) if round_.invite_limit else total
    await session.flush()


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    batch_id: int
    owner: str
    time_zone: str
    patients: list[Candidate]
    # 1 for a fresh batch; more when taken over from a dead worker or after a wait.
    claims: int


@dataclass(frozen=True, slots=True)
class Idle:
    """Why nothing was claimed: `completed` (now or before), `paused` until the next
    opening of a window, `switch` (a paused switch stops invitations: look again at
    `paused_until`), `busy` (the rest is held by live workers), `gone` (no such round),
    `again` (a long run of non-candidates was skipped: claim again)."""

    reason: Literal["completed", "paused", "switch", "busy", "gone", "again"]
    paused_until: datetime | None = None


async def claim_batch(
    session: AsyncSession,
    round_id: int,
    *,
    owner: str,
    now: datetime,
    window: MessagingWindow,
    settings: Settings,
) -> ClaimedBatch | Idle:
    """Hand out the round's next batch to `owner`, or say why there is none.

    Under the round's row lock: first a batch a dead worker left (lease run out; its
    patients up to `sent_through` without an answer become `unconfirmed`) or one that
    waited for its window, in a zone open now; else the next patients after a zone's
    cursor. Completes the round when nothing is left, and records `paused_until` when
    what is left must wait for a window. The caller commits.
    """
    round_ = await imo_repository.lock_round(session, round_id)
    if round_ is None:
        return Idle("gone")
    if round_.state == "completed":
        return Idle("completed")
    await plan_round(session, round_)
    assert round_.zones is not None
    lease = settings.imo_invitation_lease_seconds
    usable = rules.open_zones(window, now, round_.zones)

    while usable:
        batch = await imo_repository.take_over_batch(session, round_id, usable, owner, lease, now)
        if batch is None:
            break
        if batch.sent_through is not None:
            # Its worker died: whoever it may have sent a request to is not sent another.
            await imo_repository.settle_unconfirmed(
                session, batch.id, round_.reinvite_before, round_.created_at
            )
        patients = await imo_repository.batch_patients(session, batch.id, round_.reinvite_before)
        if patients:
            round_.paused_until = None
            return ClaimedBatch(batch.id, owner, batch.time_zone, patients, batch.claims)
        await imo_repository.close_empty_batch(session, batch.id)

    claimed = await _fresh_batch(session, round_, usable, owner, settings)
    if claimed == "again":
        return Idle("again")
    if claimed is not None:
        round_.paused_until = None
        return claimed

    open_batches = await imo_repository.open_batches(session, round_id)
    pending = {zone for zone, cursor in round_.zones.items() if not cursor["exhausted"]}
    if not open_batches and not pending:
        round_.state = "completed"
        round_.finished_at = now
        round_.paused_until = None
        return Idle("completed")
    if any(batch.live for batch in open_batches):
        return Idle("busy")
    waits: dict[str, datetime | None] = dict.fromkeys(pending)
    for waiting in open_batches:
        known = waits.get(waiting.time_zone, waiting.not_before)
        waits[waiting.time_zone] = (
            None if known is None or waiting.not_before is None else min(known, waiting.not_before)
        )
    round_.paused_until = rules.resume_at(window, now, waits)
    closed = sorted(zone for zone in waits if zone not in usable)
    if closed:
        # (Batches waiting in open zones wait for a switch or errors: the runner says so.)
        await imo_repository.record_pause(
            session,
            round_id,
            "window",
            "messaging window closed in " + ", ".join(closed[:5]) + (" …" if closed[5:] else ""),
            now,
            round_.paused_until,
        )
    return Idle("paused", round_.paused_until)


async def _fresh_batch(
    session: AsyncSession,
    round_: ImoInvitationRound,
    usable: list[str],
    owner: str,
    settings: Settings,
) -> ClaimedBatch | Literal["again"] | None:
    """The next eligible patients of an open zone, by keyset from its cursor; "again"
    when the scan ran out of time before finding any (the cursor still moved on)."""
    assert round_.zones is not None
    size = settings.imo_invitation_batch_size
    if round_.invite_limit is not None:
        size = min(size, round_.invite_limit - round_.handed_out)
        if size <= 0:
            _exhaust_all(round_)
            return None
    zones = dict(round_.zones)
    deadline = time.monotonic() + CLAIM_SCAN_SECONDS
    try:
        for zone in usable:
            cursor = zones[zone]
            if cursor["exhausted"]:
                continue
            after = last = cursor["after"]
            eligible: list[Candidate] = []
            exhausted = False
            scan_limit = max(size, 100)
            while len(eligible) < size and time.monotonic() < deadline:
                scanned = await imo_repository.scan_zone(
                    session, zone, last, round_.reinvite_before, scan_limit
                )
                for patient in scanned:
                    last = patient.id
                    if patient.eligible:
                        eligible.append(
                            Candidate(
                                patient.id, patient.full_name, patient.mobile_e164, patient.locale
                            )
                        )
                        if len(eligible) == size:
                            break
                if len(scanned) < scan_limit and len(eligible) < size:
                    exhausted = True
                    break
            zones[zone] = {"after": last, "exhausted": exhausted}
            if eligible:
                batch = await imo_repository.insert_batch(
                    session,
                    round_id=round_.id,
                    zone=zone,
                    after_id=after,
                    last_id=last,
                    size=len(eligible),
                    owner=owner,
                    lease_seconds=settings.imo_invitation_lease_seconds,
                )
                round_.handed_out += len(eligible)
                return ClaimedBatch(batch.id, owner, zone, eligible, 1)
            if time.monotonic() >= deadline:
                return "again"
        return None
    finally:
        # A new dict: the JSONB column sees the change.
        round_.zones = zones


def _exhaust_all(round_: ImoInvitationRound) -> None:
    assert round_.zones is not None
    round_.zones = {
        zone: {"after": cursor["after"], "exhausted": True} for zone, cursor in round_.zones.items()
    }


@dataclass(frozen=True, slots=True)
class RoundProgress:
    id: int
    state: Literal["running", "paused", "completed"]
    trigger: str
    limit: int | None
    candidates: int | None
    reached: int
    counts: dict[str, int]
    started_at: datetime
    updated_at: datetime
    paused_until: datetime | None
    finished_at: datetime | None

    @property
    def progress(self) -> float | None:
        if self.state == "completed":
            return 1.0
        if not self.candidates:
            return None
        return min(self.reached / self.candidates, 1.0)


async def round_progress(
    session: AsyncSession, round_id: int, now: datetime
) -> RoundProgress | None:
    round_ = await session.get(ImoInvitationRound, round_id, populate_existing=True)
    if round_ is None:
        return None
    counts = await imo_repository.round_counts(session, round_id)
    state: Literal["running", "paused", "completed"] = "running"
    if round_.state == "completed":
        state = "completed"
    elif round_.paused_until is not None and round_.paused_until > now:
        state = "paused"
    return RoundProgress(
        id=round_.id,
        state=state,
        trigger=round_.trigger,
        limit=round_.invite_limit,
        candidates=round_.candidates,
        reached=sum(counts.values()),
        counts=counts,
        started_at=round_.created_at,
        updated_at=round_.updated_at,
        paused_until=round_.paused_until if state == "paused" else None,
        finished_at=round_.finished_at,
    )


async def authorization_summary(session: AsyncSession) -> tuple[int, dict[str, int]]:
    """(patients, patients by authorisation status), `none` for no authorisation."""
    total, by_status = await imo_repository.authorization_counts(session)
    counts = {status: by_status.get(status, 0) for status in IMO_AUTHORIZATION_STATUSES}
    return total, {"none": total - sum(counts.values()), **counts}


assert set(BATCH_COUNTERS) >= set(IMO_AUTHORIZATION_STATUSES)
