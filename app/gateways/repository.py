"""SQL for gateway phones, their queue and the SMS they receive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.gateways.protocol import (
    CHANNEL,
    FORWARDED_TO_GATEWAY,
    TAKEN_BACK,
    UNPOLLED,
    UNRECOGNISED,
    Update,
)
from app.models import Gateway
from app.states import AttemptStatus


async def by_name(session: AsyncSession, name: str) -> Gateway | None:
    return await session.scalar(select(Gateway).where(Gateway.name == name))


async def name_taken(session: AsyncSession, name: str) -> bool:
    return await by_name(session, name) is not None


async def touch(session: AsyncSession, gateway_id: int, now: datetime) -> None:
    await session.execute(
        update(Gateway).where(Gateway.id == gateway_id).values(last_polled_at=now)
    )


@dataclass(frozen=True, slots=True)
class GatewayStats:
    gateway: Gateway
    queue_depth: int
    counts: dict[str, int]


_COUNTS = text(
    """
    SELECT a.gateway_id, a.gateway_state, count(*) AS n
    FROM delivery_attempts AS a
    WHERE a.gateway_id = ANY(:ids) AND a.gateway_id IS NOT NULL
    GROUP BY a.gateway_id, a.gateway_state
    """
)


async def list_with_stats(session: AsyncSession) -> list[GatewayStats]:
    """Every gateway, by name, with its attempts counted by state on the phone (an
    index-only scan of each phone's own attempts: ix_delivery_attempts_gateway_states)."""
    gateways = list(await session.scalars(select(Gateway).order_by(Gateway.name)))
    counts: dict[int, dict[str, int]] = {g.id: {} for g in gateways}
    for row in await session.execute(_COUNTS, {"ids": list(counts)}):
        counts[row.gateway_id][row.gateway_state] = row.n
    return [
        GatewayStats(g, counts[g.id].get(FORWARDED_TO_GATEWAY, 0), counts[g.id]) for g in gateways
    ]


@dataclass(frozen=True, slots=True)
class Offered:
    id: str
    to: str
    content: str


# An inner join with patients, here and below, drops no row: a gateway attempt is an
# SMS, and staff notifications (no patient) go by email only.
_OFFERED = f"""
    SELECT a.provider_message_id AS id, p.mobile_e164 AS to, n.body AS content
    FROM delivery_attempts AS a
    JOIN notifications AS n ON n.id = a.notification_id
    JOIN patients AS p ON p.id = n.patient_id
    WHERE a.gateway_id = :gateway_id AND a.gateway_state = '{FORWARDED_TO_GATEWAY}'
    ORDER BY a.created_at, a.id
    LIMIT :limit
"""  # noqa: S608 - constants only

# A queued attempt goes to one phone only: the pool is claimed with SKIP LOCKED, so two
# phones polling at once take different messages.
_CLAIM = text(
    f"""
    UPDATE delivery_attempts AS a SET
        gateway_id = :gateway_id,
        gateway_state = '{FORWARDED_TO_GATEWAY}',
        state_history = COALESCE(a.state_history, '[]'::jsonb)
            || jsonb_build_array(jsonb_build_object(
                'state', '{FORWARDED_TO_GATEWAY}', 'at', to_jsonb(CAST(:now AS timestamptz)))),
        updated_at = now()
    WHERE a.id IN (
        SELECT q.id FROM delivery_attempts AS q
        JOIN notifications AS n ON n.id = q.notification_id
        JOIN patients AS p ON p.id = n.patient_id
        WHERE q.channel = '{CHANNEL}' AND q.gateway_state IS NULL
              AND q.status = '{AttemptStatus.SENT}'
              AND (CAST(:country AS text) IS NULL OR p.country = :country)
        ORDER BY q.created_at, q.id
        LIMIT :limit
        FOR UPDATE OF q SKIP LOCKED
    )
    """  # noqa: S608 - constants only
)


async def offer(
    session: AsyncSession, gateway: Gateway, limit: int, fresh: int, now: datetime
) -> list[Offered]:
    """What the gateway's poll answers: the messages already offered to it and not yet
    acknowledged, topped up with at most `fresh` from its country's pool, oldest first,
    at most `limit` in all."""
    outstanding = await session.execute(text(_OFFERED), {"gateway_id": gateway.id, "limit": limit})
    offered = [Offered(*row) for row in outstanding]
    room = min(limit - len(offered), fresh)
    if room > 0:
        claimed = await session.execute(
            _CLAIM,
            {"gateway_id": gateway.id, "country": gateway.country, "limit": room, "now": now},
        )
        if claimed.rowcount:  # type: ignore[attr-defined]
            rows = await session.execute(text(_OFFERED), {"gateway_id": gateway.id, "limit": limit})
            offered = [Offered(*row) for row in rows]
    return offered


@dataclass(frozen=True, slots=True)
class Recorded:
    """The statuses of one attempt that a poll recorded (a repeat of the status before
    it is not), in the order reported, each with its reason."""

    attempt_id: int
    message_id: str
    statuses: list[str | None]
    reasons: list[str | None]


# A poll's status updates in one statement. The phone's attempts named are locked first
# (a materialised CTE: a phone that polls twice at once records each status once); each
# update becomes a history entry (`state`, `at`, a FAILED's `reason`, an unrecognised
# word as `status`); an entry equal to the one before it (the batch's, else the stored
# history's last), its time aside, is a repeat and is not recorded; `gateway_state`
# becomes the last recognised state recorded.
_RECORD_UPDATES = text(
    f"""
    WITH u AS (
        SELECT * FROM unnest(CAST(:message_ids AS text[]), CAST(:states AS text[]),
                             CAST(:statuses AS text[]), CAST(:reasons AS text[]))
             WITH ORDINALITY AS u(message_id, state, status, reason, position)
    ),
    locked AS (
        SELECT a.id, a.provider_message_id, a.state_history
        FROM delivery_attempts AS a
        WHERE a.channel = '{CHANNEL}' AND a.provider_message_id = ANY(:message_ids)
              AND a.gateway_id = :gateway_id
        ORDER BY a.id
        FOR UPDATE
    ),
    entries AS (
        SELECT l.id, l.provider_message_id, l.state_history, u.position, u.state, u.status,
               u.reason,
               jsonb_strip_nulls(jsonb_build_object(
                   'state', u.state, 'at', CAST(:at AS text), 'reason', NULLIF(u.reason, ''),
                   'status', CASE WHEN u.state = '{UNRECOGNISED}' THEN u.status END
               )) AS entry
        FROM u JOIN locked AS l ON l.provider_message_id = u.message_id
    ),
    compared AS (
        SELECT e.*, COALESCE(
                   lag(e.entry - 'at') OVER (PARTITION BY e.id ORDER BY e.position),
                   (e.state_history -> -1) - 'at'
               ) AS previous
        FROM entries AS e
    ),
    recorded AS (
        SELECT c.id, c.provider_message_id,
               jsonb_agg(c.entry ORDER BY c.position) AS entries,
               (array_agg(c.state ORDER BY c.position DESC)
                   FILTER (WHERE c.state <> '{UNRECOGNISED}'))[1] AS last_state,
               array_agg(c.status ORDER BY c.position) AS statuses,
               array_agg(c.reason ORDER BY c.position) AS reasons
        FROM compared AS c
        WHERE c.previous IS NULL OR c.previous <> c.entry - 'at'
        GROUP BY c.id, c.provider_message_id
    ),
    updated AS (
        UPDATE delivery_attempts AS a SET
            state_history = COALESCE(a.state_history, '[]'::jsonb) || r.entries,
            gateway_state = COALESCE(r.last_state, a.gateway_state),
            updated_at = now()
        FROM recorded AS r
        WHERE a.id = r.id
        RETURNING a.id, r.provider_message_id, r.statuses, r.reasons
    )
    SELECT id, provider_message_id, statuses, reasons, NULL AS known FROM updated
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, (SELECT count(*) FROM locked)
    """  # noqa: S608 - constants only
)


async def record_updates(
    session: AsyncSession, gateway_id: int, updates: Sequence[Update], at: datetime
) -> tuple[list[Recorded], int]:
    """Append a poll's statuses to the histories of this gateway's attempts they name
    (in one statement; ids it was never given are ignored) -> what was recorded, and
    how many of the ids named were this gateway's."""
    if not updates:
        return [], 0
    rows = await session.execute(
        _RECORD_UPDATES,
        {
            "gateway_id": gateway_id,
            "message_ids": [u.id for u in updates],
            "states": [u.state for u in updates],
            "statuses": [u.status for u in updates],
            "reasons": [u.reason for u in updates],
            "at": at.isoformat(),
        },
    )
    recorded, known = [], 0
    for row in rows:
        if row.id is None:
            known = int(row.known)
        else:
            recorded.append(
                Recorded(row.id, row.provider_message_id, list(row.statuses), list(row.reasons))
            )
    return recorded, known


# Offered to a phone that has not polled since `cutoff`, and not acknowledged: taken back.
_TAKE_BACK = text(
    f"""
    UPDATE delivery_attempts AS a SET
        gateway_state = '{TAKEN_BACK}',
        state_history = COALESCE(a.state_history, '[]'::jsonb)
            || jsonb_build_array(jsonb_build_object(
                'state', '{TAKEN_BACK}', 'at', to_jsonb(CAST(:now AS timestamptz)),
                'reason', 'gateway offline')),
        updated_at = now()
    WHERE a.id IN (
        SELECT q.id FROM delivery_attempts AS q
        JOIN gateways AS g ON g.id = q.gateway_id
        WHERE q.gateway_state = '{FORWARDED_TO_GATEWAY}' AND g.last_polled_at < :cutoff
        ORDER BY q.id
        LIMIT :limit
        FOR UPDATE OF q SKIP LOCKED
    )
    RETURNING a.id, a.provider_message_id,
              (SELECT g.name FROM gateways AS g WHERE g.id = a.gateway_id) AS gateway
    """  # noqa: S608 - constants only
)


async def take_back(
    session: AsyncSession, cutoff: datetime, now: datetime, limit: int
) -> list[tuple[int, str, str]]:
    """Take back what offline phones were offered: (attempt id, message id, gateway)."""
    rows = await session.execute(_TAKE_BACK, {"cutoff": cutoff, "now": now, "limit": limit})
    return [(row.id, row.provider_message_id, row.gateway) for row in rows]


# Queued before `queued_before` and still in the pool, for a country no live phone serves
# (one of that country, or of none, that polled since `live_since`): out of the pool.
_ABANDON_UNPOLLED = text(
    f"""
    UPDATE delivery_attempts AS a SET
        gateway_state = '{UNPOLLED}',
        state_history = COALESCE(a.state_history, '[]'::jsonb)
            || jsonb_build_array(jsonb_build_object(
                'state', '{UNPOLLED}', 'at', to_jsonb(CAST(:now AS timestamptz)),
                'reason', 'no gateway phone polling for ' || waiting.country)),
        updated_at = now()
    FROM (
        SELECT q.id, p.country FROM delivery_attempts AS q
        JOIN notifications AS n ON n.id = q.notification_id
        JOIN patients AS p ON p.id = n.patient_id
        WHERE q.channel = '{CHANNEL}' AND q.gateway_state IS NULL
              AND q.status = '{AttemptStatus.SENT}' AND q.created_at < :queued_before
              AND NOT EXISTS (
                  SELECT 1 FROM gateways AS g
                  WHERE (g.country IS NULL OR g.country = p.country)
                        AND g.last_polled_at >= :live_since
              )
        ORDER BY q.created_at, q.id
        LIMIT :limit
        FOR UPDATE OF q SKIP LOCKED
    ) AS waiting
    WHERE a.id = waiting.id
    RETURNING a.id, a.provider_message_id, waiting.country
    """  # noqa: S608 - constants only
)


async def abandon_unpolled(
    session: AsyncSession, queued_before: datetime, live_since: datetime, now: datetime, limit: int
) -> list[tuple[int, str, str]]:
    """Take out of the pool what waited since before `queued_before` for a country no
    phone has polled for since `live_since`: (attempt id, message id, country)."""
    rows = await session.execute(
        _ABANDON_UNPOLLED,
        {"queued_before": queued_before, "live_since": live_since, "now": now, "limit": limit},
    )
    return [(row.id, row.provider_message_id, row.country) for row in rows]
