"""SQL of invitation rounds: set-based, one statement per batch, keyset scans.

Candidates are consenting patients with a mobile (`ix_patients_invitable`) for whom
`app.imo.rules.is_candidate` holds; `_CANDIDATE` is that rule in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import false, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.models import ImoAuthorization, ImoInvitationBatch, ImoInvitationRound, ImoRoundPause
from app.models.imo_authorization import IMO_AUTHORIZATION_STATUSES
from app.models.imo_invitation_batch import BATCH_COUNTERS

_INVITABLE = "p.reminder_consent = 'granted' AND p.mobile_e164 IS NOT NULL"
_CANDIDATE = (
    "(a.patient_id IS NULL OR (a.status <> 'subscribed'"
    " AND (a.last_invited_at IS NULL OR a.last_invited_at < :reinvite_before)))"
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """What inviting one patient needs."""

    id: str
    full_name: str
    mobile_e164: str
    locale: str


@dataclass(frozen=True, slots=True)
class ScannedPatient:
    id: str
    full_name: str
    mobile_e164: str
    locale: str
    eligible: bool


@dataclass(frozen=True, slots=True)
class OpenBatch:
    time_zone: str
    state: str
    live: bool
    not_before: datetime | None


# ---------------------------------------------------------------------------- rounds

_INSERT_ROUND = text(
    """
    INSERT INTO imo_invitation_rounds
        (state, trigger, trigger_key, invite_limit, reinvite_before)
    VALUES ('running', :trigger, :trigger_key, :invite_limit, :reinvite_before)
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)


async def insert_round(
    session: AsyncSession,
    *,
    trigger: str,
    trigger_key: str | None,
    invite_limit: int | None,
    reinvite_before: datetime,
) -> int | None:
    """A new running round's id; None when one is running (or `trigger_key` was used).

    ON CONFLICT DO NOTHING answers both unique indexes without an error, so the
    caller's transaction stays usable.
    """
    round_id = await session.scalar(
        _INSERT_ROUND,
        {
            "trigger": trigger,
            "trigger_key": trigger_key,
            "invite_limit": invite_limit,
            "reinvite_before": reinvite_before,
        },
    )
    return int(round_id) if round_id is not None else None


async def running_round_id(session: AsyncSession) -> int | None:
    round_id = await session.scalar(
        text("SELECT id FROM imo_invitation_rounds WHERE state = 'running'")
    )
    return int(round_id) if round_id is not None else None


async def round_by_trigger_key(session: AsyncSession, key: str) -> ImoInvitationRound | None:
    round_id = await session.scalar(
        text("SELECT id FROM imo_invitation_rounds WHERE trigger_key = :key"), {"key": key}
    )
    if round_id is None:
        return None
    return await session.get(ImoInvitationRound, round_id)


async def lock_round(session: AsyncSession, round_id: int) -> ImoInvitationRound | None:
    """The round, locked until the transaction ends: claims of one round are serial."""
    return await session.get(
        ImoInvitationRound, round_id, with_for_update=True, populate_existing=True
    )


_COUNT_BY_ZONE = text(
    f"""
    SELECT p.time_zone, count(*) AS candidates
    FROM patients AS p
    LEFT JOIN imo_authorizations AS a ON a.patient_id = p.id
    WHERE {_INVITABLE} AND {_CANDIDATE}
    GROUP BY p.time_zone
    """  # noqa: S608 - constants only
)


async def candidates_by_zone(session: AsyncSession, reinvite_before: datetime) -> dict[str, int]:
    """Candidates per time zone: one pass over the patients, when a round is planned."""
    rows = await session.execute(_COUNT_BY_ZONE, {"reinvite_before": reinvite_before})
    return {row.time_zone: int(row.candidates) for row in rows}


# ---------------------------------------------------------------------------- batches

_SCAN = text(
    f"""
    WITH scanned AS (
        SELECT p.id, p.full_name, p.mobile_e164, p.locale
        FROM patients AS p
        WHERE {_INVITABLE} AND p.time_zone = :zone AND p.id > :after
        ORDER BY p.id
        LIMIT :scan_limit
    )
    SELECT s.id, s.full_name, s.mobile_e164, s.locale, {_CANDIDATE} AS eligible
    FROM scanned AS s
    LEFT JOIN imo_authorizations AS a ON a.patient_id = s.id
    ORDER BY s.id
    """  # noqa: S608 - constants only
)


async def scan_zone(
    session: AsyncSession, zone: str, after: str, reinvite_before: datetime, scan_limit: int
) -> list[ScannedPatient]:
    """The next `scan_limit` invitable patients of `zone` after id `after`, in id order,
    each marked eligible or not. Bounded work per call, whatever share is eligible."""
    rows = await session.execute(
        _SCAN,
        {
            "zone": zone,
            "after": after,
            "reinvite_before": reinvite_before,
            "scan_limit": scan_limit,
        },
    )
    return [ScannedPatient(*row) for row in rows]


_BATCH_PATIENTS = text(
    f"""
    SELECT p.id, p.full_name, p.mobile_e164, p.locale
    FROM imo_invitation_batches AS b
    JOIN patients AS p
      ON p.time_zone = b.time_zone AND p.id > b.after_id AND p.id <= b.last_id
    LEFT JOIN imo_authorizations AS a ON a.patient_id = p.id
    WHERE b.id = :batch_id AND {_INVITABLE} AND {_CANDIDATE} AND p.id <> ALL(b.skip_ids)
    ORDER BY p.id
    """  # noqa: S608 - constants only
)


async def batch_patients(
    session: AsyncSession, batch_id: int, reinvite_before: datetime
) -> list[Candidate]:
    """The patients of a batch still to invite, in id order.

    Whoever this round reached is no longer among them: a known answer made them
    non-candidates (invited now, or subscribed), `skip_ids` holds the rest. Call
    `settle_unconfirmed` first on a batch taken over from a dead worker.
    """
    rows = await session.execute(
        _BATCH_PATIENTS, {"batch_id": batch_id, "reinvite_before": reinvite_before}
    )
    return [Candidate(*row) for row in rows]


# Accepted (by callback) an invitation of this round whose answer was never written.
_SUBSCRIBED_UNANSWERED = (
    "(a.status = 'subscribed' AND a.subscribed_at >= :round_started"
    " AND (a.last_invited_at IS NULL OR a.last_invited_at < :round_started))"
)
_SETTLE_UNCONFIRMED = text(
    f"""
    WITH lost AS (
        SELECT p.id
        FROM imo_invitation_batches AS b
        JOIN patients AS p
          ON p.time_zone = b.time_zone AND p.id > b.after_id AND p.id <= b.sent_through
        LEFT JOIN imo_authorizations AS a ON a.patient_id = p.id
        WHERE b.id = :batch_id AND {_INVITABLE} AND p.id <> ALL(b.skip_ids)
          AND ({_CANDIDATE} OR {_SUBSCRIBED_UNANSWERED})
    )
    UPDATE imo_invitation_batches SET
        skip_ids = skip_ids || ARRAY(SELECT id FROM lost),
        unconfirmed = unconfirmed + (SELECT count(*) FROM lost),
        sent_through = NULL,
        updated_at = now()
    WHERE id = :batch_id
    RETURNING (SELECT count(*) FROM lost)
    """  # noqa: S608 - constants only
)


async def settle_unconfirmed(
    session: AsyncSession, batch_id: int, reinvite_before: datetime, round_started: datetime
) -> int:
    """A dead worker's batch: its patients up to `sent_through` with no answer written
    may have been sent a request. Skip them for this round (counted `unconfirmed`) so
    that none gets a second one; returns how many. Those who accepted meanwhile count
    too: the round reached them, but their answer was lost with the worker."""
    lost = await session.scalar(
        _SETTLE_UNCONFIRMED,
        {"batch_id": batch_id, "reinvite_before": reinvite_before, "round_started": round_started},
    )
    return int(lost or 0)


_RESERVE = text(
    """
    UPDATE imo_invitation_batches
    SET sent_through = :through, lease_until = now() + make_interval(secs => :lease),
        updated_at = now()
    WHERE id = :id AND owner = :owner AND state = 'claimed'
    RETURNING id
    """
)


async def reserve(
    session: AsyncSession, batch_id: int, owner: str, through: str, lease_seconds: float
) -> bool:
    """Record, before they are sent, that requests to the batch's patients up to id
    `through` may leave (renewing the lease). False, writing nothing, when `owner` no
    longer holds the batch: the caller must not send."""
    held = await session.scalar(
        _RESERVE, {"id": batch_id, "owner": owner, "through": through, "lease": lease_seconds}
    )
    return held is not None


async def insert_batch(
    session: AsyncSession,
    *,
    round_id: int,
    zone: str,
    after_id: str,
    last_id: str,
    size: int,
    owner: str,
    lease_seconds: float,
) -> ImoInvitationBatch:
    batch_id = await session.scalar(
        text(
            """
            INSERT INTO imo_invitation_batches
                (round_id, time_zone, after_id, last_id, size, state, owner, lease_until)
            VALUES (:round_id, :zone, :after_id, :last_id, :size, 'claimed', :owner,
                    now() + make_interval(secs => :lease))
            RETURNING id
            """
        ),
        {
            "round_id": round_id,
            "zone": zone,
            "after_id": after_id,
            "last_id": last_id,
            "size": size,
            "owner": owner,
            "lease": lease_seconds,
        },
    )
    batch = await session.get(ImoInvitationBatch, batch_id)
    assert batch is not None
    return batch


_TAKE_OVER = text(
    """
    UPDATE imo_invitation_batches AS b
    SET state = 'claimed', owner = :owner, lease_until = now() + make_interval(secs => :lease),
        not_before = NULL, claims = b.claims + 1, updated_at = now()
    WHERE b.id = (
        SELECT id FROM imo_invitation_batches
        WHERE round_id = :round_id AND time_zone = ANY(CAST(:zones AS varchar[]))
          AND ((state = 'claimed' AND lease_until < now())
               OR (state = 'waiting' AND (not_before IS NULL OR not_before <= :now)))
        ORDER BY id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING b.id
    """
)


async def take_over_batch(
    session: AsyncSession,
    round_id: int,
    zones: Sequence[str],
    owner: str,
    lease_seconds: float,
    now: datetime,
) -> ImoInvitationBatch | None:
    """Claim a batch of `zones` that a dead worker left, or that waited long enough."""
    batch_id = await session.scalar(
        _TAKE_OVER,
        {
            "round_id": round_id,
            "zones": list(zones),
            "owner": owner,
            "lease": lease_seconds,
            "now": now,
        },
    )
    if batch_id is None:
        return None
    return await session.get(ImoInvitationBatch, batch_id, populate_existing=True)


async def open_batches(session: AsyncSession, round_id: int) -> list[OpenBatch]:
    rows = await session.execute(
        text(
            """
            SELECT time_zone, state, (state = 'claimed' AND lease_until >= now()) AS live,
                   not_before
            FROM imo_invitation_batches
            WHERE round_id = :round_id AND state <> 'done'
            """
        ),
        {"round_id": round_id},
    )
    return [OpenBatch(*row) for row in rows]


async def close_empty_batch(session: AsyncSession, batch_id: int) -> None:
    await session.execute(
        text(
            "UPDATE imo_invitation_batches SET state = 'done', owner = NULL, lease_until = NULL,"
            " updated_at = now() WHERE id = :id"
        ),
        {"id": batch_id},
    )


_COUNTER_UPDATES = ", ".join(f"{name} = {name} + :{name}" for name in BATCH_COUNTERS)
_RECORD_BATCH = text(
    f"""
    UPDATE imo_invitation_batches SET
        {_COUNTER_UPDATES},
        skip_ids = skip_ids || CAST(:skip_ids AS varchar[]),
        state = CAST(:state AS varchar),
        owner = CASE WHEN CAST(:state AS varchar) = 'claimed' THEN owner END,
        lease_until = CASE WHEN CAST(:state AS varchar) = 'claimed'
                           THEN now() + make_interval(secs => :lease) END,
        -- Leaving `claimed`, every request sent has its answer in this write.
        sent_through = CASE WHEN CAST(:state AS varchar) = 'claimed' THEN sent_through END,
        not_before = :not_before,
        updated_at = now()
    WHERE id = :id AND owner = :owner AND state = 'claimed'
    RETURNING id
    """  # noqa: S608 - constants only
)

# A subscription that arrived (by callback) after the patient was picked is newer than
# any answer to the invitation: it stands. Returns the patients who are subscribed now and
# were not (Imo answered that they already were), with their authorisation as it stood
# before (status, when it changed: None for none), which keys their `imo.subscribed`.
_UPSERT_AUTHORIZATIONS = text(
    """
    WITH v AS (
        SELECT v.patient_id, v.status, v.invited_at
        FROM unnest(CAST(:patient_ids AS varchar[]), CAST(:statuses AS varchar[]),
                    CAST(:invited_at AS timestamptz[])) AS v(patient_id, status, invited_at)
        JOIN patients AS p ON p.id = v.patient_id
    ), before AS (
        SELECT a.patient_id, a.status, a.updated_at
        FROM imo_authorizations AS a JOIN v ON v.patient_id = a.patient_id
    ), after AS (
    INSERT INTO imo_authorizations (patient_id, status, last_invited_at, subscribed_at)
    SELECT v.patient_id, v.status, v.invited_at,
           CASE WHEN v.status = 'subscribed' THEN v.invited_at END
    FROM v
    ON CONFLICT (patient_id) DO UPDATE SET
        status = CASE WHEN imo_authorizations.status = 'subscribed' THEN 'subscribed'
                      ELSE excluded.status END,
        last_invited_at = GREATEST(imo_authorizations.last_invited_at, excluded.last_invited_at),
        subscribed_at = CASE WHEN excluded.status = 'subscribed'
                             THEN COALESCE(imo_authorizations.subscribed_at,
                                           excluded.subscribed_at)
                             ELSE imo_authorizations.subscribed_at END,
        updated_at = now()
    RETURNING patient_id, status
    )
    SELECT after.patient_id, before.status, before.updated_at
    FROM after LEFT JOIN before ON before.patient_id = after.patient_id
    WHERE after.status = 'subscribed' AND before.status IS DISTINCT FROM 'subscribed'
    """
)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """Answers gathered since the last write of one batch, and where the batch goes."""

    # patient id -> (authorisation status, when it was invited)
    authorizations: Mapping[str, tuple[str, datetime]]
    counters: Mapping[str, int]
    skip_ids: Sequence[str]
    # `claimed` (still working: renew the lease), `done`, or `waiting` from `not_before`.
    state: str = "claimed"
    not_before: datetime | None = None


async def record(
    session: AsyncSession, batch_id: int, owner: str, lease_seconds: float, rec: BatchRecord
) -> list[tuple[str, tuple[str, str]]] | None:
    """Write a batch's answers: its counters, lease and state (1 statement) and the
    patients' authorisations (1 statement). Returns the patients the answers made
    subscribed, each with their authorisation as it stood before (`lock_authorization`'s
    shape). None, writing nothing, when `owner` no longer holds the batch (its lease ran
    out and another worker took it over): the caller rolls back and stops."""
    params: dict[str, Any] = {name: rec.counters.get(name, 0) for name in BATCH_COUNTERS}
    params.update(
        id=batch_id,
        owner=owner,
        skip_ids=list(rec.skip_ids),
        state=rec.state,
        lease=lease_seconds,
        not_before=rec.not_before,
    )
    if await session.scalar(_RECORD_BATCH, params) is None:
        return None
    if not rec.authorizations:
        return []
    assert {s for s, _ in rec.authorizations.values()} <= set(IMO_AUTHORIZATION_STATUSES)
    rows = await session.execute(
        _UPSERT_AUTHORIZATIONS,
        {
            "patient_ids": list(rec.authorizations),
            "statuses": [status for status, _ in rec.authorizations.values()],
            "invited_at": [at for _, at in rec.authorizations.values()],
        },
    )
    return [(row.patient_id, _as_it_stood(row.status, row.updated_at)) for row in rows]


# ---------------------------------------------------------------------------- reading

_SUMS = ", ".join(f"COALESCE(sum({name}), 0) AS {name}" for name in BATCH_COUNTERS)


async def round_counts(session: AsyncSession, round_id: int) -> dict[str, int]:
    """The round's answers so far, by result: the sum over its batches."""
    row = (
        await session.execute(
            text(f"SELECT {_SUMS} FROM imo_invitation_batches WHERE round_id = :id"),  # noqa: S608
            {"id": round_id},
        )
    ).one()
    return {name: int(value) for name, value in zip(BATCH_COUNTERS, row, strict=True)}


async def authorization_counts(session: AsyncSession) -> tuple[int, dict[str, int]]:
    """(patients, patients by authorisation status): two index scans, no join."""
    total = await session.scalar(text("SELECT count(*) FROM patients"))
    rows = await session.execute(
        text("SELECT status, count(*) FROM imo_authorizations GROUP BY status")
    )
    return int(total or 0), {status: int(count) for status, count in rows}


async def lock_authorization(session: AsyncSession, patient_id: str) -> tuple[str, str]:
    """The patient's authorisation, locked: (status, when it last changed), or
    ("none", "") when they have none yet."""
    row = (
        await session.execute(
            select(ImoAuthorization.status, ImoAuthorization.updated_at)
            .where(ImoAuthorization.patient_id == patient_id)
            .with_for_update()
        )
    ).first()
    return _as_it_stood(*row) if row is not None else _as_it_stood(None, None)


def _as_it_stood(status: str | None, updated_at: datetime | None) -> tuple[str, str]:
    """An authorisation as `imo.subscribed` is keyed by: (status, when it last changed),
    ("none", "") for none."""
    if status is None or updated_at is None:
        return ("none", "")
    return (status, updated_at.isoformat())


async def mark_subscribed(
    session: AsyncSession, patient_id: str, now: datetime, *, invited_at: datetime | None
) -> bool:
    """Upsert the patient's authorisation as subscribed (keeping the first moment),
    unless its status moved away from `invited` or `subscribed` after `invited_at` (None:
    unknown, so only those two statuses yield). False when it did not apply."""
    # In ON CONFLICT, the columns name the stored row.
    still_true = or_(
        ImoAuthorization.status.in_(("invited", "subscribed")),
        ImoAuthorization.updated_at <= invited_at if invited_at is not None else false(),
    )
    applied = await session.scalar(
        insert(ImoAuthorization)
        .values(patient_id=patient_id, status="subscribed", subscribed_at=now)
        .on_conflict_do_update(
            index_elements=[ImoAuthorization.patient_id],
            set_={
                "status": "subscribed",
                "subscribed_at": func.coalesce(ImoAuthorization.subscribed_at, now),
                "updated_at": func.now(),
            },
            where=still_true,
        )
        .returning(ImoAuthorization.id)
    )
    return applied is not None


# A spell goes on while the same reason is seen again within this long; after a longer
# gap (the round ran meanwhile) the same reason opens a new spell.
PAUSE_GAP_SECONDS = 300

_RECORD_PAUSE = text(
    """
    WITH latest AS (
        SELECT id FROM imo_round_pauses
        WHERE round_id = :round_id AND reason = :reason AND detail = :detail
          AND last_seen_at > CAST(:now AS timestamptz) - make_interval(secs => :gap)
        ORDER BY id DESC LIMIT 1
    ), extended AS (
        UPDATE imo_round_pauses AS p
        SET last_seen_at = greatest(p.last_seen_at, :now), until = :until
        FROM latest WHERE p.id = latest.id
        RETURNING p.id
    )
    INSERT INTO imo_round_pauses (round_id, reason, detail, started_at, last_seen_at, until)
    SELECT :round_id, :reason, :detail, :now, :now, :until
    WHERE NOT EXISTS (SELECT FROM extended)
    """
)


async def record_pause(
    session: AsyncSession,
    round_id: int,
    reason: str,
    detail: str,
    now: datetime,
    until: datetime | None,
) -> None:
    """Note that round `round_id` is paused for `reason` (one of PAUSE_REASONS): a new
    spell, or the latest of the same reason and detail extended."""
    await session.execute(
        _RECORD_PAUSE,
        {
            "round_id": round_id,
            "reason": reason,
            "detail": detail[:200],
            "now": now,
            "until": until,
            "gap": PAUSE_GAP_SECONDS,
        },
    )


async def round_pauses(
    session: AsyncSession, round_ids: Sequence[int], per_round: int
) -> dict[int, list[ImoRoundPause]]:
    """The latest `per_round` pause spells of each round, newest first."""
    ranked = (
        select(
            ImoRoundPause,
            func.row_number()
            .over(partition_by=ImoRoundPause.round_id, order_by=ImoRoundPause.id.desc())
            .label("rank"),
        )
        .where(ImoRoundPause.round_id.in_(round_ids))
        .subquery()
    )
    pause = aliased(ImoRoundPause, ranked)
    found: dict[int, list[ImoRoundPause]] = {round_id: [] for round_id in round_ids}
    rows = await session.scalars(
        select(pause).where(ranked.c.rank <= per_round).order_by(pause.round_id, pause.id.desc())
    )
    for row in rows:
        found[row.round_id].append(row)
    return found


_ACCEPTANCE = text(
    """
    SELECT date_trunc(:unit, last_invited_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period,
           count(*) AS invited,
           count(*) FILTER (WHERE status = 'subscribed') AS subscribed
    FROM imo_authorizations
    WHERE last_invited_at >= :since AND last_invited_at < :until
    GROUP BY 1 ORDER BY 1
    """
)


async def acceptance(
    session: AsyncSession, since: datetime, until: datetime, unit: str
) -> list[tuple[datetime, int, int]]:
    """Per `unit` ('day' or 'week', UTC) of their latest invitation in [since, until):
    (period, patients invited, of whom subscribed now)."""
    if unit not in ("day", "week"):
        raise ValueError(f"unit {unit!r}")
    rows = await session.execute(_ACCEPTANCE, {"unit": unit, "since": since, "until": until})
    return [(period, int(invited), int(subscribed)) for period, invited, subscribed in rows]
