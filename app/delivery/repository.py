"""The send path's SQL: set-based, one statement per batch, never a query per row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.base import WhatsAppTemplateMessage
from app.delivery.types import ClaimedNotification, Outcome, Report
from app.models.experiment_membership import EvictionReason
from app.states import (
    ATTEMPT_MOVES,
    ATTEMPT_PROVES,
    CONFIRMED_STATUSES,
    EVENT_SOURCES,
    EVENT_TARGET,
    HELD_STATE,
    NOTIFICATION_RANK,
    REACHED_STATUSES,
    READ_RECEIPT_CHANNELS,
    REPORT_EVENTS,
    SETTLE_EVENTS,
    AttemptStatus,
    NotificationEvent,
    NotificationState,
    notification_moves,
    sql_attempt_moves,
    sql_case,
    sql_in,
    sql_notification_moves,
)

A = AttemptStatus
E = NotificationEvent
S = NotificationState

# Every state and status in the SQL below comes from app/states.py: the
# guards (which rows move, to what) are generated from its tables, never written here.

_CLAIM = text(
    f"""
    WITH due AS (
        SELECT id FROM notifications
        WHERE {sql_in("state", EVENT_SOURCES[E.CLAIM])} AND due_at <= now()
        ORDER BY due_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE notifications AS n
        SET state = '{EVENT_TARGET[E.CLAIM]}', claimed_at = now(), updated_at = now(),
            lease_id = CAST(:lease_id AS uuid)
        FROM due WHERE n.id = due.id
        RETURNING n.id, n.patient_id, n.staff_id, n.purpose, n.title, n.body, n.locale,
                  n.expires_at, n.channel_chain, n.channel_index, n.retry_count,
                  n.claimed_at, n.template_key, n.variables, n.country, n.event_id
    )
    -- A patient's notification reads its patient (p); a staff member's (by email only:
    -- app/delivery/policy.py) its staff member (st), in the window of the patient whose
    -- event made it, else of STAFF_TIME_ZONE. A left join each: an inner join would
    -- leave the other kind claimed and never settled.
    SELECT c.id, c.patient_id, c.staff_id, c.purpose, c.title, c.body, c.locale,
           c.expires_at, c.channel_chain, c.channel_index, c.retry_count, c.claimed_at,
           COALESCE(p.full_name, st.name, '') AS full_name, p.mobile_e164,
           COALESCE(p.email, st.email) AS email,
           COALESCE(p.country, c.country, '') AS country,
           COALESCE(p.time_zone, st.time_zone, :staff_time_zone) AS time_zone,
           COALESCE(p.reminder_consent, '') AS reminder_consent,
           COALESCE(p.opted_out_channels, '{{}}') AS opted_out_channels,
           -- A staff message on a conversation: the conversation (its Reply-To, its
           -- subject as the email's), by ix_messages_notification.
           conv.id::text AS conversation_id, conv.subject AS conversation_subject,
           -- Why the patient's address may not be mailed (app/email: a hard bounce, a
           -- complaint, an unsubscribe), by its primary key; addresses are kept lower-case.
           (SELECT ea.reason FROM email_addresses AS ea
            WHERE ea.address = lower(COALESCE(p.email, st.email))
              AND ea.status = 'blocked') AS email_blocked,
           -- WhatsApp's customer-service window: the patient wrote on WhatsApp in the
           -- last 24 hours (ix_messages_patient_received), so free text may go.
           EXISTS (SELECT FROM messages AS m
                   WHERE m.patient_id = c.patient_id AND m.direction = 'in'
                     AND m.channel = 'whatsapp'
                     AND m.received_at > now() - interval '24 hours') AS whatsapp_window_open,
           a.status AS imo_status,
           COALESCE(p.whatsapp_no_account_at > now() - make_interval(days => :no_account_days),
                    false) AS whatsapp_unavailable,
           t.whatsapp->>'name' AS whatsapp_name,
           t.whatsapp->>'language' AS whatsapp_language,
           COALESCE(t.whatsapp->>'content_sid', '') AS whatsapp_content_sid,
           -- The template's body parameters, filled from the reminder's variables in order.
           CASE WHEN t.whatsapp IS NOT NULL THEN ARRAY(
               SELECT COALESCE(c.variables->>x.name, '')
               FROM jsonb_array_elements_text(t.whatsapp->'parameters')
                    WITH ORDINALITY AS x(name, position)
               ORDER BY x.position) END AS whatsapp_parameters
    FROM claimed AS c
    LEFT JOIN patients AS p ON p.id = c.patient_id
    -- By primary keys; a patient's notification (staff_id null) finds no row at once.
    LEFT JOIN LATERAL (
        SELECT s.name, s.email, ep.time_zone
        FROM staff AS s
        LEFT JOIN events AS e ON e.id = c.event_id
        LEFT JOIN patients AS ep ON ep.id = e.patient_id
        WHERE s.id = c.staff_id
    ) AS st ON true
    LEFT JOIN imo_authorizations AS a ON a.patient_id = c.patient_id
    LEFT JOIN templates AS t ON t.key = c.template_key AND t.locale = c.locale
    LEFT JOIN LATERAL (
        SELECT co.id, co.subject FROM messages AS m
        JOIN conversations AS co ON co.id = m.conversation_id
        WHERE m.notification_id = c.id
        LIMIT 1
    ) AS conv ON true
    """  # noqa: S608 - constants only
)


async def claim_due(
    session: AsyncSession,
    limit: int,
    *,
    no_whatsapp_days: int = 30,
    lease_id: uuid.UUID | None = None,
    staff_time_zone: str = "UTC",
) -> list[ClaimedNotification]:
    """Move up to `limit` due notifications to `sending` for this worker alone, under
    its lease `lease_id` (None: no lease, stale after SENDING_STALE_AFTER_SECONDS).

    SKIP LOCKED lets any number of workers claim at once without waiting on or
    double-claiming each other's rows. A patient WhatsApp said has no account within
    `no_whatsapp_days` comes `whatsapp_unavailable`. A staff member's notification
    comes with `staff_id`, their name and email, and the time zone of the patient whose
    event made it, else `staff_time_zone`.
    """
    rows = await session.execute(
        _CLAIM,
        {
            "limit": limit,
            "no_account_days": no_whatsapp_days,
            "lease_id": lease_id,
            "staff_time_zone": staff_time_zone,
        },
    )
    claimed = []
    for row in rows.mappings():
        fields = dict(row)
        name = fields.pop("whatsapp_name")
        language = fields.pop("whatsapp_language")
        content_sid = fields.pop("whatsapp_content_sid")
        parameters = fields.pop("whatsapp_parameters")
        template = (
            WhatsAppTemplateMessage(name, language, tuple(parameters), content_sid)
            if name and language
            else None
        )
        claimed.append(ClaimedNotification(**fields, whatsapp_template=template))
    return claimed


_INSERT_ATTEMPTS = text(
    f"""
    WITH ours AS (
        SELECT n.id, v.channel, n.expires_at > now() AS useful
        FROM unnest(CAST(:notification_ids AS uuid[]), CAST(:channels AS text[]),
                    CAST(:claimed_ats AS timestamptz[])) AS v(notification_id, channel, claimed_at)
        JOIN notifications AS n ON n.id = v.notification_id
        -- By primary key: read by state, the generic plan walked every held row per chunk.
        WHERE {sql_in("n.state", [HELD_STATE], indexable=False)} AND n.claimed_at = v.claimed_at
        -- In id order, as every other writer of several notifications: no deadlocks.
        ORDER BY n.id
        FOR UPDATE OF n
    ), written AS (
        INSERT INTO delivery_attempts (notification_id, channel, status, created_at, updated_at)
        SELECT id, channel, '{A.SENDING}', now(), now() FROM ours WHERE useful
        RETURNING id, notification_id
    )
    SELECT id, notification_id FROM written
    UNION ALL
    SELECT NULL, id FROM ours WHERE NOT useful
    """  # noqa: S608 - constants only
)


async def insert_attempts(
    session: AsyncSession, attempts: Sequence[tuple[uuid.UUID, str, datetime | None]]
) -> dict[uuid.UUID, int | None]:
    """Record that these (notification, channel, claimed_at) sends are about to happen
    -> attempt ids, for the notifications this worker still holds; None for those
    that expired since they were claimed (no attempt: they must not go out).

    Written and committed BEFORE the provider is called: a crash after the call leaves
    a `sending` attempt behind, which the sweeper marks `unconfirmed` instead of resending.
    `claimed_at` is the claim's fencing token: a notification the sweeper released (and
    another worker may have claimed) since gets no attempt, and must not be sent. The
    row lock keeps the sweeper from releasing it between this check and the commit.
    Expiry is checked here, on the clock that stamps the attempt, so no attempt is ever
    created after its notification's `expires_at`.
    """
    rows = await session.execute(
        _INSERT_ATTEMPTS,
        {
            "notification_ids": [notification_id for notification_id, _, _ in attempts],
            "channels": [channel for _, channel, _ in attempts],
            "claimed_ats": [claimed_at for _, _, claimed_at in attempts],
        },
    )
    return {row.notification_id: row.id for row in rows}


@dataclass(frozen=True, slots=True)
class AttemptResult:
    attempt_id: int
    status: str  # sent | failed
    provider_message_id: str | None
    provider_status: str | None
    error_code: str | None
    error_message: str | None


# One row per attempt and answer, from parallel arrays bound as parameters.
_ATTEMPT_ANSWERS = """SELECT * FROM unnest(
            CAST(:ids AS bigint[]), CAST(:statuses AS text[]),
            CAST(:provider_message_ids AS text[]), CAST(:provider_statuses AS text[]),
            CAST(:error_codes AS text[]), CAST(:error_messages AS text[])
        ) AS v(id, status, provider_message_id, provider_status, error_code, error_message)"""

# Rows are locked in id order, as provider reports lock them (_ADVANCE_ATTEMPTS): a
# write-back and a batch of callbacks on the same attempts cannot deadlock.
_RECORD_ATTEMPTS = text(
    f"""
    WITH v AS (
        {_ATTEMPT_ANSWERS}
    ), locked AS (
        SELECT a.id, a.status FROM delivery_attempts AS a
        WHERE a.id IN (SELECT id FROM v) ORDER BY a.id FOR UPDATE
    ), m AS (
        SELECT v.*, {sql_attempt_moves("locked.status", "v.status")} AS moves
        FROM v JOIN locked ON locked.id = v.id
    )
    -- Our own answer, so its provider id and error are kept even when a callback's
    -- status got there first; the status moves by the attempt table like any report.
    UPDATE delivery_attempts AS a SET
        status = CASE WHEN m.moves THEN m.status ELSE a.status END,
        provider_message_id = COALESCE(a.provider_message_id, m.provider_message_id),
        provider_status = CASE WHEN m.moves THEN m.provider_status ELSE a.provider_status END,
        error_code = COALESCE(a.error_code, m.error_code),
        error_message = COALESCE(a.error_message, m.error_message),
        sent_at = CASE WHEN m.status = '{A.SENT}' THEN COALESCE(a.sent_at, now())
                       ELSE a.sent_at END,
        failed_at = CASE WHEN m.moves AND m.status = '{A.FAILED}' THEN COALESCE(a.failed_at, now())
                         ELSE a.failed_at END,
        updated_at = now()
    FROM m
    WHERE a.id = m.id
    RETURNING a.id, a.status
    """  # noqa: S608 - constants only
)


async def record_attempts(
    session: AsyncSession, results: Sequence[AttemptResult]
) -> dict[int, str]:
    """Write providers' answers; returns each attempt's status as stored afterwards.

    A provider callback may have got there first (a read receipt before our own write):
    the stored status then stands, and the caller reconciles with what it returns.
    """
    if not results:
        return {}
    rows = await session.execute(
        _RECORD_ATTEMPTS,
        {
            "ids": [r.attempt_id for r in results],
            "statuses": [r.status for r in results],
            "provider_message_ids": [r.provider_message_id for r in results],
            "provider_statuses": [r.provider_status for r in results],
            "error_codes": [r.error_code for r in results],
            "error_messages": [r.error_message for r in results],
        },
    )
    return {row.id: row.status for row in rows}


_SETTLE_SOURCES = {source for source, _ in notification_moves(SETTLE_EVENTS)}

_SETTLE = text(
    f"""
    WITH settled AS (
        UPDATE notifications AS n SET
            state = CASE WHEN {sql_notification_moves("n.state", "v.state", SETTLE_EVENTS)}
                         THEN v.state ELSE n.state END,
            channel_chain = CASE WHEN v.chain IS NULL THEN n.channel_chain
                                 ELSE string_to_array(v.chain, ',') END,
            channel_index = v.channel_index,
            due_at = COALESCE(v.due_at, n.due_at),
            retry_count = v.retry_count,
            failure_reason = v.failure_reason,
            sent_at = COALESCE(n.sent_at, v.sent_at),
            delivered_at = CASE WHEN v.state = '{S.DELIVERED}'
                                THEN COALESCE(n.delivered_at, now()) ELSE n.delivered_at END,
            read_at = CASE WHEN v.state = '{S.READ}' THEN COALESCE(n.read_at, now())
                           ELSE n.read_at END,
            -- Still held (falling back to the next channel): the claim stands. (Swept
            -- meanwhile, it has none: a fresh one lets the sweeper find it again.)
            claimed_at = CASE WHEN v.state = '{HELD_STATE}' THEN COALESCE(n.claimed_at, now())
                              ELSE NULL END,
            lease_id = CASE WHEN v.state = '{HELD_STATE}' THEN n.lease_id ELSE NULL END,
            paused_by = v.paused_by,
            updated_at = now()
        FROM unnest(CAST(:ids AS uuid[]), CAST(:states AS text[]), CAST(:chains AS text[]),
                    CAST(:channel_indexes AS int[]), CAST(:due_ats AS timestamptz[]),
                    CAST(:retry_counts AS int[]), CAST(:failure_reasons AS text[]),
                    CAST(:sent_ats AS timestamptz[]), CAST(:paused_bys AS text[]))
             AS v(id, state, chain, channel_index, due_at, retry_count, failure_reason, sent_at,
                  paused_by)
        WHERE n.id = v.id AND {sql_in("n.state", _SETTLE_SOURCES, indexable=False)}
        RETURNING n.appointment_id, n.state
    )
    -- Failed on every channel: the experiment member whose reminder this was is evicted
    -- (and still counted). In the same statement, and only failed reminders are looked
    -- up (by primary key): with nothing failed, or no experiment, it costs nothing.
    UPDATE experiment_memberships AS m
    SET evicted_at = now(), evicted_reason = :undeliverable
    WHERE m.evicted_at IS NULL
      AND m.id IN (SELECT a.membership_id FROM settled AS s
                   JOIN appointments AS a ON a.id = s.appointment_id
                   WHERE s.state = '{S.FAILED}')
    """  # noqa: S608 - constants only
)


async def settle(session: AsyncSession, outcomes: dict[uuid.UUID, Outcome]) -> None:
    """Write where each claimed notification stands now, in one statement, which also
    evicts the experiment members whose reminders failed on every channel.

    Each state moves only as the notification table allows (`SETTLE_EVENTS`): a
    callback that already moved a notification to `delivered`/`read` is kept.
    """
    if not outcomes:
        return
    items = list(outcomes.items())
    await session.execute(
        _SETTLE,
        {
            "ids": [notification_id for notification_id, _ in items],
            "states": [o.state.value for _, o in items],
            "chains": [",".join(o.channel_chain) if o.channel_chain else None for _, o in items],
            "channel_indexes": [o.channel_index for _, o in items],
            "due_ats": [o.due_at for _, o in items],
            "retry_counts": [o.retry_count for _, o in items],
            "failure_reasons": [o.failure_reason for _, o in items],
            "sent_ats": [o.sent_at for _, o in items],
            "paused_bys": [o.paused_by for _, o in items],
            "undeliverable": EvictionReason.UNDELIVERABLE,
        },
    )


_DOWNGRADE_IMO = text(
    """
    UPDATE imo_authorizations AS a SET status = v.status, updated_at = now()
    FROM unnest(CAST(:patient_ids AS text[]), CAST(:statuses AS text[])) AS v(patient_id, status)
    WHERE a.patient_id = v.patient_id AND a.status = 'subscribed'
    """
)


_NO_WHATSAPP = text(
    """
    UPDATE patients AS p SET whatsapp_no_account_at = now(), updated_at = now()
    FROM notifications AS n
    WHERE n.id = ANY(CAST(:notification_ids AS uuid[])) AND p.id = n.patient_id
    """
)


async def mark_no_whatsapp(session: AsyncSession, notification_ids: Collection[uuid.UUID]) -> None:
    """WhatsApp said the patients of these notifications have no account there: the
    dispatcher leaves it out of their chains for WHATSAPP_RETRY_NO_ACCOUNT_DAYS."""
    if notification_ids:
        await session.execute(_NO_WHATSAPP, {"notification_ids": list(notification_ids)})


async def downgrade_imo(session: AsyncSession, downgrades: dict[str, str]) -> None:
    """Imo said these patients are no longer reachable there: next time, go straight to
    the fallback channel."""
    if downgrades:
        await session.execute(
            _DOWNGRADE_IMO,
            {"patient_ids": list(downgrades), "statuses": list(downgrades.values())},
        )


def _stale_claim(n: str) -> str:
    """SQL: notification `n` is held by a worker that is gone. Its lease ran out or was
    dropped; or, claimed without a lease, it has been held since before :stale_before.
    (A live worker whose batch failed releases that batch itself: `release_batch`.)"""
    return f"""{n}.state = '{HELD_STATE}' AND CASE
        WHEN {n}.lease_id IS NULL THEN {n}.claimed_at < :stale_before
        ELSE NOT EXISTS (SELECT FROM dispatch_leases AS l
                         WHERE l.id = {n}.lease_id AND l.expires_at > now()) END"""


def _batch_claim(n: str) -> str:
    """SQL: notification `n` is still held under one of the claims (:ids, :claimed_ats)."""
    return f"""{sql_in(f"{n}.state", [HELD_STATE], indexable=False)}
        AND ({n}.id, {n}.claimed_at) IN (
            SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:claimed_ats AS timestamptz[])))"""  # noqa: S608 - constants only


_RENEW_LEASE = text(
    """
    INSERT INTO dispatch_leases (id, holder, expires_at)
    VALUES (:id, :holder, now() + make_interval(secs => :seconds))
    ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    """
)


async def renew_lease(
    session: AsyncSession, lease_id: uuid.UUID, holder: str, seconds: float
) -> None:
    """Take or renew lease `lease_id` for `seconds` from now, on the database's clock.

    Renewing a lease that ran out (and whose claims were taken over) is harmless: the
    claims taken over were released (`lease_id` cleared), and each claim is fenced by
    its `claimed_at` anyway.
    """
    await session.execute(_RENEW_LEASE, {"id": lease_id, "holder": holder, "seconds": seconds})


async def drop_lease(session: AsyncSession, lease_id: uuid.UUID) -> None:
    """A worker stopping: what it still holds is taken over at once."""
    await session.execute(text("DELETE FROM dispatch_leases WHERE id = :id"), {"id": lease_id})


async def forget_old_leases(session: AsyncSession, older_than_seconds: float) -> int:
    """Delete leases that ran out more than `older_than_seconds` ago (their workers are
    gone; a claim still naming one counts as stale all the same) -> how many."""
    result = await session.execute(
        text(
            "DELETE FROM dispatch_leases"
            " WHERE expires_at < now() - make_interval(secs => :seconds) RETURNING id"
        ),
        {"seconds": older_than_seconds},
    )
    return len(result.all())


# The notification state an attempt proves, by rank (sent, delivered, read differ).
_PROVEN_RANK = {status.value: NOTIFICATION_RANK[state] for status, state in ATTEMPT_PROVES.items()}
_PROVEN_BY_RANK = {NOTIFICATION_RANK[state]: state.value for state in ATTEMPT_PROVES.values()}
assert len(_PROVEN_BY_RANK) == len(set(ATTEMPT_PROVES.values()))


def _release_unstarted(claim: Callable[[str], str]) -> TextClause:
    """Due again: held notifications that `claim` names and that no provider took."""
    return text(
        f"""
    UPDATE notifications AS n
    SET state = '{EVENT_TARGET[E.RETRY]}', claimed_at = NULL, lease_id = NULL,
        updated_at = now()
    WHERE {claim("n")}
      AND NOT EXISTS (SELECT 1 FROM delivery_attempts AS a
                      WHERE a.notification_id = n.id AND a.status <> '{A.FAILED}')
      AND n.id IN (SELECT s.id FROM notifications AS s WHERE {claim("s")}
                   ORDER BY s.claimed_at LIMIT :limit
                   FOR UPDATE SKIP LOCKED)
    RETURNING n.id
    """  # noqa: S608 - constants only
    )


def _mark_unconfirmed(claim: Callable[[str], str]) -> TextClause:
    """Settled: held notifications that `claim` names whose attempt may have gone out."""
    return text(
        f"""
    WITH stale AS (
        SELECT s.id FROM notifications AS s
        WHERE {claim("s")}
        ORDER BY s.claimed_at LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), unconfirmed AS (
        UPDATE delivery_attempts AS a
        SET status = '{A.UNCONFIRMED}', updated_at = now(),
            error_message = 'the worker stopped before recording the provider''s answer'
        FROM stale WHERE a.notification_id = stale.id
          AND {sql_in("a.status", (old for old, new in ATTEMPT_MOVES if new == A.UNCONFIRMED))}
        RETURNING a.notification_id, {NOTIFICATION_RANK[ATTEMPT_PROVES[A.UNCONFIRMED]]} AS rank
    ), taken AS (
        -- A provider's callback may have beaten the dead worker's write: the message
        -- went out, and how far it got is known.
        SELECT notification_id, max(rank) AS rank FROM (
            SELECT notification_id, rank FROM unconfirmed
            UNION ALL
            SELECT a.notification_id,
                   {sql_case("a.status", _PROVEN_RANK)}
            FROM delivery_attempts AS a JOIN stale ON a.notification_id = stale.id
            WHERE {sql_in("a.status", ATTEMPT_PROVES)}
        ) AS ranked GROUP BY notification_id
    )
    UPDATE notifications AS n
    SET state = {sql_case("taken.rank", _PROVEN_BY_RANK)},
        claimed_at = NULL, lease_id = NULL, updated_at = now(),
        sent_at = COALESCE(n.sent_at, now()),
        delivered_at = CASE WHEN taken.rank >= {NOTIFICATION_RANK[S.DELIVERED]}
                            THEN COALESCE(n.delivered_at, now()) ELSE n.delivered_at END,
        read_at = CASE WHEN taken.rank = {NOTIFICATION_RANK[S.READ]}
                       THEN COALESCE(n.read_at, now()) ELSE n.read_at END,
        failure_reason = CASE
            WHEN EXISTS (SELECT 1 FROM delivery_attempts AS a
                         WHERE a.notification_id = n.id
                           AND {sql_in("a.status", CONFIRMED_STATUSES)})
            THEN n.failure_reason
            ELSE 'unconfirmed: handed to the provider, answer not recorded; not resent' END
    FROM taken WHERE n.id = taken.notification_id
    RETURNING n.id
    """  # noqa: S608 - constants only
    )


_SWEEP = (_mark_unconfirmed(_stale_claim), _release_unstarted(_stale_claim))
_RELEASE = (_mark_unconfirmed(_batch_claim), _release_unstarted(_batch_claim))


async def _settle_held(
    session: AsyncSession, statements: tuple[TextClause, TextClause], params: dict[str, Any]
) -> tuple[int, list[uuid.UUID]]:
    """-> (how many are due again, the ids settled `sent` or beyond)."""
    mark_unconfirmed, release_unstarted = statements
    settled = list((await session.scalars(mark_unconfirmed, params)).all())
    requeued = len((await session.execute(release_unstarted, params)).all())
    return requeued, settled


async def sweep_stale_sending(
    session: AsyncSession, stale_before: datetime, limit: int = 1000
) -> tuple[int, list[uuid.UUID]]:
    """Settle notifications a dead worker left in `sending` -> (how many requeued, the
    ids of those settled `sent` or beyond):
    those whose lease ran out (or was dropped), and those claimed without a lease
    before `stale_before`.

    Never sent to a provider (no attempt, or only failed ones): due again. Possibly
    sent (an attempt was under way): `sent` with the attempt `unconfirmed`. Sent for
    sure (a callback already raised an attempt): `sent`, `delivered` or `read`, as the
    attempt. Either way never resent, so never sent twice.
    """
    return await _settle_held(session, _SWEEP, {"stale_before": stale_before, "limit": limit})


async def release_batch(
    session: AsyncSession, claims: Sequence[tuple[uuid.UUID, datetime | None]]
) -> tuple[int, list[uuid.UUID]]:
    """A live worker's own batch that failed mid-way (PostgreSQL or Redis away), settled
    at once as the sweeper settles a dead worker's: what no provider took is due again,
    what had an attempt ends `unconfirmed` (never resent). Only the (id, claimed_at)
    claims still held: what was settled meanwhile, or taken over, is left alone."""
    params = {
        "ids": [notification_id for notification_id, _ in claims],
        "claimed_ats": [claimed_at for _, claimed_at in claims],
        "limit": len(claims),
    }
    return await _settle_held(session, _RELEASE, params)


# Rows are locked in id order so concurrent batches cannot deadlock. A report that does
# not move its attempt (a repeat, a late or contradicting one) changes nothing at all,
# not even a field: it is kept in the raw report log only (`log_reports`).
_ADVANCE_ATTEMPTS = text(
    f"""
    WITH v AS (
        {_ATTEMPT_ANSWERS}
    ), old AS (
        SELECT a.id, a.notification_id, a.channel, a.status, a.provider_message_id
        FROM delivery_attempts AS a
        WHERE a.id IN (SELECT id FROM v) ORDER BY a.id FOR UPDATE
    ), matched AS (
        SELECT v.*, old.notification_id, old.channel, old.status AS old_status,
               {sql_attempt_moves("old.status", "v.status")} AS moves
        FROM v JOIN old ON old.id = v.id
        WHERE old.provider_message_id IS NULL OR v.provider_message_id IS NULL
              OR old.provider_message_id = v.provider_message_id
    ), moved AS (
        UPDATE delivery_attempts AS a SET
            status = m.status,
            provider_message_id = COALESCE(a.provider_message_id, m.provider_message_id),
            provider_status = COALESCE(m.provider_status, a.provider_status),
            error_code = COALESCE(m.error_code, a.error_code),
            error_message = COALESCE(m.error_message, a.error_message),
            sent_at = CASE WHEN {sql_in("m.status", CONFIRMED_STATUSES)}
                           THEN COALESCE(a.sent_at, now()) ELSE a.sent_at END,
            delivered_at = CASE WHEN {sql_in("m.status", REACHED_STATUSES)}
                                THEN COALESCE(a.delivered_at, now()) ELSE a.delivered_at END,
            read_at = CASE WHEN m.status = '{A.READ}' THEN COALESCE(a.read_at, now())
                           ELSE a.read_at END,
            failed_at = CASE WHEN m.status = '{A.FAILED}' THEN COALESCE(a.failed_at, now())
                             ELSE a.failed_at END,
            updated_at = now()
        FROM matched AS m
        WHERE a.id = m.id AND m.moves
    )
    SELECT id, notification_id, channel, old_status,
           CASE WHEN moves THEN status ELSE old_status END AS status
    FROM matched
    """  # noqa: S608 - constants only
)


@dataclass(frozen=True, slots=True)
class AdvancedAttempt:
    notification_id: uuid.UUID
    channel: str
    old_status: str
    status: str

    @property
    def changed(self) -> bool:
        return self.old_status != self.status


async def advance_attempts(
    session: AsyncSession, reports: Sequence[Report]
) -> dict[int, AdvancedAttempt]:
    """Move each reported attempt as the attempt table allows (to a higher rank only).

    One report per attempt. Attempts missing from the answer do not exist,
    or their provider id is another message's.
    """
    if not reports:
        return {}
    rows = await session.execute(
        _ADVANCE_ATTEMPTS,
        {
            "ids": [r.attempt_id for r in reports],
            "statuses": [str(r.status) for r in reports],
            "provider_message_ids": [r.provider_message_id for r in reports],
            "provider_statuses": [r.provider_status for r in reports],
            "error_codes": [r.error_code for r in reports],
            "error_messages": [r.error_message for r in reports],
        },
    )
    return {row.id: AdvancedAttempt(*row[1:]) for row in rows}


_LOG_REPORTS = text(
    """
    INSERT INTO delivery_reports (attempt_id, status, provider_message_id, provider_status,
                                  error_code, error_message, applied)
    SELECT * FROM unnest(
        CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:provider_message_ids AS text[]),
        CAST(:provider_statuses AS text[]), CAST(:error_codes AS text[]),
        CAST(:error_messages AS text[]), CAST(:applied AS boolean[]))
    """
)


async def log_reports(session: AsyncSession, reports: Sequence[tuple[Report, bool]]) -> None:
    """Keep (report, whether it moved its attempt) pairs as received, in one statement.

    Every report must name an existing attempt.
    """
    if reports:
        await session.execute(
            _LOG_REPORTS,
            {
                "ids": [r.attempt_id for r, _ in reports],
                "statuses": [str(r.status) for r, _ in reports],
                "provider_message_ids": [r.provider_message_id for r, _ in reports],
                "provider_statuses": [r.provider_status for r, _ in reports],
                "error_codes": [r.error_code for r, _ in reports],
                "error_messages": [r.error_message for r, _ in reports],
                "applied": [applied for _, applied in reports],
            },
        )


_RAISE_NOTIFICATIONS = text(
    f"""
    WITH v AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:states AS text[])) AS v(id, state)
    ), locked AS (
        SELECT n.id FROM notifications AS n WHERE n.id IN (SELECT id FROM v)
        ORDER BY n.id FOR UPDATE
    )
    UPDATE notifications AS n SET
        state = v.state,
        delivered_at = COALESCE(n.delivered_at, now()),
        read_at = CASE WHEN v.state = '{S.READ}' THEN COALESCE(n.read_at, now())
                       ELSE n.read_at END,
        failure_reason = NULL,
        updated_at = now()
    FROM v JOIN locked ON locked.id = v.id
    WHERE n.id = v.id AND {sql_notification_moves("n.state", "v.state", REPORT_EVENTS)}
    """  # noqa: S608 - constants only
)


async def raise_notifications(
    session: AsyncSession, reached: Sequence[tuple[uuid.UUID, str]]
) -> None:
    """Move notifications to the `delivered`/`read` their attempts reached, as the
    notification table allows for a provider's report (`REPORT_EVENTS`): never down,
    never while a worker holds them."""
    best: dict[uuid.UUID, str] = {}
    for notification_id, state in reached:
        known = best.get(notification_id)
        if known is None or NOTIFICATION_RANK[S(state)] > NOTIFICATION_RANK[S(known)]:
            best[notification_id] = str(state)
    if best:
        await session.execute(
            _RAISE_NOTIFICATIONS, {"ids": list(best), "states": list(best.values())}
        )


async def whatsapp_template_of(session: AsyncSession, notification_id: uuid.UUID) -> str:
    """The WhatsApp template (`name/language`, as the adapters name it) a notification was
    sent as, or its own template `key/locale` when it has no mapping (any more)."""
    label: str | None = await session.scalar(
        text(
            """
            SELECT COALESCE((t.whatsapp->>'name') || '/' || (t.whatsapp->>'language'),
                            n.template_key || '/' || n.locale)
            FROM notifications AS n
            LEFT JOIN templates AS t ON t.key = n.template_key AND t.locale = n.locale
            WHERE n.id = :id
            """
        ),
        {"id": notification_id},
    )
    return label or ""


async def lock_notification_for_callback(
    session: AsyncSession, notification_id: uuid.UUID
) -> tuple[str, list[str] | None, int, str | None] | None:
    """(state, channel_chain, channel_index, patient's Imo status), row locked."""
    row = (
        await session.execute(
            text(
                """
                SELECT n.state, n.channel_chain, n.channel_index, a.status
                FROM notifications AS n
                LEFT JOIN imo_authorizations AS a ON a.patient_id = n.patient_id
                WHERE n.id = :id FOR UPDATE OF n
                """
            ),
            {"id": notification_id},
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2], row[3])


async def latest_attempt_id(session: AsyncSession, notification_id: uuid.UUID) -> int | None:
    latest: int | None = await session.scalar(
        text("SELECT max(id) FROM delivery_attempts WHERE notification_id = :id"),
        {"id": notification_id},
    )
    return latest


async def gateway_numbers(session: AsyncSession) -> frozenset[str]:
    """The gateway phones' own numbers: never recipients (deny rules)."""
    rows = await session.execute(text("SELECT number FROM gateways WHERE number IS NOT NULL"))
    return frozenset(rows.scalars())


# Index-backed (ix_notifications_unread: the same conditions, then `expires_at`). A
# purpose without its own rule takes the "*" rule, if any. Rows a callback or another
# worker holds are skipped; a read receipt committed meanwhile takes a row out.
_HAND_ON_UNREAD = text(
    f"""
    WITH rules AS (
        SELECT * FROM unnest(CAST(:purposes AS text[]), CAST(:hours AS float8[]))
            AS r(purpose, hours)
    ), due AS (
        SELECT n.id, n.channel_chain[n.channel_index + 1] AS channel, r.hours
        FROM notifications AS n
        JOIN rules AS r ON r.purpose = CASE WHEN n.purpose IN (SELECT purpose FROM rules)
                                            THEN n.purpose ELSE '*' END
        WHERE {sql_in("n.state", EVENT_SOURCES[E.UNREAD_FALLBACK])}
          AND n.unread_fallback_at IS NULL
          AND {sql_in("n.channel_chain[n.channel_index + 1]", READ_RECEIPT_CHANNELS)}
          AND n.expires_at > now()
          AND cardinality(n.channel_chain) > n.channel_index + 1
          AND n.sent_at <= now() - make_interval(secs => r.hours * 3600)
        ORDER BY n.id
        LIMIT :limit
        FOR UPDATE OF n SKIP LOCKED
    )
    UPDATE notifications AS n SET
        state = '{EVENT_TARGET[E.UNREAD_FALLBACK]}',
        channel_index = n.channel_index + 1,
        due_at = now(),
        retry_count = 0,
        unread_fallback_at = now(),
        failure_reason = due.channel || ': not read within ' || due.hours || ' h',
        updated_at = now()
    FROM due WHERE n.id = due.id
    RETURNING n.id
    """  # noqa: S608 - constants only
)


async def hand_on_unread(
    session: AsyncSession, hours_by_purpose: dict[str, float], limit: int
) -> list[uuid.UUID]:
    """Reminders taken by Imo or WhatsApp and not read within their purpose's hours: due
    now on the next channel of their chain, marked so that it happens once -> their ids.
    The dispatcher sends them in the patient's messaging window, before their expiry."""
    rows = await session.execute(
        _HAND_ON_UNREAD,
        {
            "purposes": list(hours_by_purpose),
            "hours": list(hours_by_purpose.values()),
            "limit": limit,
        },
    )
    return [row.id for row in rows]


# Index-backed (ix_delivery_attempts_sent). The look-up is counted and stamped before it
# is made, and committed: another worker skips these rows now (SKIP LOCKED) and after
# (`reconciled_at`), so each attempt is looked up once per interval, whoever runs.
_CLAIM_SENT = text(
    f"""
    WITH stale AS (
        SELECT a.id FROM delivery_attempts AS a
        WHERE a.status = '{A.SENT}' AND a.channel = ANY(CAST(:channels AS text[]))
          AND a.sent_at < :sent_before
          AND a.provider_message_id IS NOT NULL
          AND a.reconcile_checks < :max_checks
          AND (a.reconciled_at IS NULL OR a.reconciled_at < :checked_before)
        ORDER BY a.sent_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE delivery_attempts AS a
    SET reconcile_checks = a.reconcile_checks + 1, reconciled_at = now()
    FROM stale WHERE a.id = stale.id
    RETURNING a.id, a.channel, a.provider_message_id, a.reconcile_checks
    """  # noqa: S608 - constants only
)


@dataclass(frozen=True, slots=True)
class SentAttempt:
    id: int
    channel: str
    provider_message_id: str
    # Look-ups so far, this one included.
    checks: int


async def claim_sent_attempts(
    session: AsyncSession,
    channels: Sequence[str],
    *,
    sent_before: datetime,
    checked_before: datetime,
    max_checks: int,
    limit: int,
) -> list[SentAttempt]:
    """Attempts on `channels` still `sent` since before `sent_before`, not looked up
    since `checked_before` nor `max_checks` times: counted as looked up now."""
    rows = await session.execute(
        _CLAIM_SENT,
        {
            "channels": list(channels),
            "sent_before": sent_before,
            "checked_before": checked_before,
            "max_checks": max_checks,
            "limit": limit,
        },
    )
    return [SentAttempt(*row) for row in rows]


_GIVE_UP = text(
    f"""
    UPDATE delivery_attempts AS a
    SET reconcile_checks = GREATEST(a.reconcile_checks, :max_checks),
        error_code = COALESCE(a.error_code, v.error_code),
        error_message = COALESCE(a.error_message, v.error_message),
        updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:error_codes AS text[]),
                CAST(:error_messages AS text[])) AS v(id, error_code, error_message)
    WHERE a.id = v.id AND {sql_in("a.status", [A.SENT], indexable=False)}
    """  # noqa: S608 - constants only
)


async def give_up_reconciling(
    session: AsyncSession, reasons: dict[int, tuple[str, str]], max_checks: int
) -> None:
    """Look these attempts up no more, and say why on them: {attempt id: (code, message)}.
    They stay `sent`: what became of the message is not known."""
    if reasons:
        await session.execute(
            _GIVE_UP,
            {
                "ids": list(reasons),
                "error_codes": [code for code, _ in reasons.values()],
                "error_messages": [message for _, message in reasons.values()],
                "max_checks": max_checks,
            },
        )
