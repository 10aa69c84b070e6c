"""The webhooks' SQL: set-based, one statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import time_ordered_uuid
from app.states import sql_in

# The event, and one delivery for every active endpoint that wants its type.
_EMIT = text(
    """
    WITH event AS (
        INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
        VALUES (:id, :type, :patient_id, CAST(:data AS jsonb), now())
        RETURNING id, occurred_at
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT event.id, e.name, :patient_id, event.occurred_at, 'pending', event.occurred_at
    FROM event JOIN webhook_endpoints AS e ON e.active AND :type = ANY(e.events)
    """
)


async def emit(
    session: AsyncSession, type_: str, patient_id: str | None, data: dict[str, Any]
) -> uuid.UUID:
    event_id = time_ordered_uuid()
    await session.execute(
        _EMIT,
        {
            "id": event_id,
            "type": type_,
            "patient_id": patient_id,
            "data": orjson.dumps(data).decode(),
        },
    )
    return event_id


# Several events at once (a gateway poll's incoming SMS): one statement for the events
# and their deliveries.
_EMIT_MANY = text(
    """
    WITH event AS (
        INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
        SELECT v.id, v.type, v.patient_id, CAST(v.data AS jsonb), now()
        FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:patient_ids AS text[]),
                    CAST(:data AS text[])) AS v(id, type, patient_id, data)
        RETURNING id, type, patient_id, occurred_at
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT event.id, e.name, event.patient_id, event.occurred_at, 'pending', event.occurred_at
    FROM event JOIN webhook_endpoints AS e ON e.active AND event.type = ANY(e.events)
    """
)


async def emit_many(
    session: AsyncSession, events: Sequence[tuple[str, str | None, dict[str, Any]]]
) -> list[uuid.UUID]:
    """`emit` for each (type, patient id, data), in one statement."""
    if not events:
        return []
    event_ids = [time_ordered_uuid() for _ in events]
    await session.execute(
        _EMIT_MANY,
        {
            "ids": event_ids,
            "types": [type_ for type_, _, _ in events],
            "patient_ids": [patient_id for _, patient_id, _ in events],
            "data": [orjson.dumps(data).decode() for _, _, data in events],
        },
    )
    return event_ids


_REPLAY = text(
    """
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT ev.id, e.name, ev.patient_id, ev.occurred_at, 'pending', now()
    FROM webhook_events AS ev JOIN webhook_endpoints AS e ON e.name = :name
    WHERE ev.occurred_at >= :since AND ev.occurred_at < :until
      AND ev.type = ANY(CAST(:types AS text[]))
    ON CONFLICT (event_id, endpoint_name) DO UPDATE
        SET state = 'pending', next_attempt_at = now(), updated_at = now()
    RETURNING id
    """
)


async def replay(
    session: AsyncSession, name: str, since: datetime, until: datetime, types: Sequence[str]
) -> int:
    rows = await session.execute(
        _REPLAY, {"name": name, "since": since, "until": until, "types": list(types)}
    )
    return len(rows.all())


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: int
    attempts: int
    endpoint_name: str
    url: str
    secret: str
    event_id: uuid.UUID
    type: str
    patient_id: str | None
    data: dict[str, Any]
    occurred_at: datetime


# Claimed for `lease` seconds: a worker that dies mid-send leaves them due again then.
# A delivery waits while an earlier one of the same patient is owed to the same endpoint
# (ix_webhook_deliveries_lane): a patient's events arrive in order.
_CLAIM = text(
    """
    WITH due AS (
        SELECT d.id FROM webhook_deliveries AS d
        JOIN webhook_endpoints AS e ON e.name = d.endpoint_name
        WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND e.active
          AND NOT EXISTS (
              SELECT FROM webhook_deliveries AS earlier
              WHERE earlier.state = 'pending' AND earlier.endpoint_name = d.endpoint_name
                AND earlier.patient_id = d.patient_id
                AND (earlier.occurred_at, earlier.id) < (d.occurred_at, d.id))
        ORDER BY d.next_attempt_at, d.id
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries AS d
        SET next_attempt_at = now() + make_interval(secs => :lease), updated_at = now()
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.attempts, d.endpoint_name, d.event_id
    )
    SELECT c.id, c.attempts, c.endpoint_name, e.url, e.secret, c.event_id, ev.type,
           ev.patient_id, ev.data, ev.occurred_at
    FROM claimed AS c
    JOIN webhook_endpoints AS e ON e.name = c.endpoint_name
    JOIN webhook_events AS ev ON ev.id = c.event_id
    ORDER BY ev.occurred_at, c.id
    """
)


async def claim_due(session: AsyncSession, limit: int, lease: float) -> list[DueDelivery]:
    rows = await session.execute(_CLAIM, {"limit": limit, "lease": lease})
    return [DueDelivery(**row) for row in rows.mappings()]


@dataclass(frozen=True, slots=True)
class Attempted:
    id: int
    endpoint_name: str
    delivered: bool
    status: int | None
    error: str | None
    # For a failure: when to try again, or None to give up (`failed`).
    next_attempt_at: datetime | None


_RECORD = text(
    f"""
    UPDATE webhook_deliveries AS d SET
        attempts = d.attempts + 1,
        state = CASE WHEN v.delivered THEN 'delivered'
                     WHEN v.next_attempt_at IS NULL THEN 'failed' ELSE 'pending' END,
        delivered_at = CASE WHEN v.delivered THEN now() ELSE d.delivered_at END,
        next_attempt_at = COALESCE(v.next_attempt_at, d.next_attempt_at),
        last_status = v.status,
        last_error = v.error,
        updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:delivered AS boolean[]),
                CAST(:statuses AS integer[]), CAST(:errors AS text[]),
                CAST(:next_attempts AS timestamptz[]))
         AS v(id, delivered, status, error, next_attempt_at)
    -- By primary key only: the state is checked on the row found (an outbox grown long
    -- in an outage must not be walked by its `pending` index for each batch).
    WHERE d.id = v.id AND {sql_in("d.state", ["pending"], indexable=False)}
    """  # noqa: S608 - constants only
)

# An endpoint's run of failures: started by its first failure, ended by any success.
_HEALTH = text(
    """
    UPDATE webhook_endpoints SET
        failing_since = CASE WHEN name = ANY(CAST(:succeeded AS text[])) THEN NULL
                             ELSE COALESCE(failing_since, now()) END,
        updated_at = now()
    WHERE name = ANY(CAST(:succeeded AS text[])) OR name = ANY(CAST(:failed AS text[]))
    """
)

_DISABLE = text(
    """
    UPDATE webhook_endpoints SET active = false, disabled_at = now(), updated_at = now()
    WHERE active AND failing_since < :cutoff
    RETURNING name
    """
)


async def record(
    session: AsyncSession, attempted: Sequence[Attempted], disable_before: datetime
) -> list[str]:
    """Write a batch's outcomes -> the endpoints disabled for failing since before
    `disable_before`."""
    if not attempted:
        return []
    await session.execute(
        _RECORD,
        {
            "ids": [a.id for a in attempted],
            "delivered": [a.delivered for a in attempted],
            "statuses": [a.status for a in attempted],
            "errors": [a.error for a in attempted],
            "next_attempts": [a.next_attempt_at for a in attempted],
        },
    )
    succeeded = sorted({a.endpoint_name for a in attempted if a.delivered})
    failed = sorted({a.endpoint_name for a in attempted if not a.delivered} - set(succeeded))
    await session.execute(_HEALTH, {"succeeded": succeeded, "failed": failed})
    rows = await session.execute(_DISABLE, {"cutoff": disable_before})
    return [row.name for row in rows]


_SUBSCRIBED_TYPES = text(
    "SELECT DISTINCT unnest(events) AS type FROM webhook_endpoints WHERE active"
)


async def subscribed_types(session: AsyncSession) -> frozenset[str]:
    """The event types some active endpoint wants."""
    return frozenset((await session.execute(_SUBSCRIBED_TYPES)).scalars())


# One event per notification that stands in an event state now, with one delivery for
# every active endpoint that wants it. The event id is derived from the notification,
# its state and its channel, so that the same change seen by two writers (the worker's
# settle and a provider's early report) is one event; a notification that reaches
# `sent` again on another channel (after an unread hand-on) is another.
_NOTIFICATION_EVENTS = text(
    """
    WITH wanted AS (
        SELECT DISTINCT unnest(events) AS type FROM webhook_endpoints WHERE active
    ), event AS (
        INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
        SELECT CAST(md5(concat_ws(':', 'notification', n.state, n.id, n.channel_index))
                    AS uuid),
               'notification.' || n.state, n.patient_id,
               jsonb_build_object(
                   'notification_id', n.id,
                   'patient_id', n.patient_id,
                   'staff_id', n.staff_id,
                   'appointment_id', n.appointment_id,
                   'purpose', n.purpose,
                   'state', n.state,
                   'channel', n.channel_chain[n.channel_index + 1],
                   'failure_reason', n.failure_reason,
                   'sent_at', n.sent_at,
                   'delivered_at', n.delivered_at,
                   'read_at', n.read_at),
               now()
        FROM notifications AS n
        WHERE n.id = ANY(CAST(:ids AS uuid[]))
          AND n.state = ANY(CAST(:states AS text[]))
          AND 'notification.' || n.state IN (SELECT type FROM wanted)
        ORDER BY n.id
        ON CONFLICT (id) DO NOTHING
        RETURNING id, type, patient_id, occurred_at
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT event.id, e.name, event.patient_id, event.occurred_at, 'pending', event.occurred_at
    FROM event JOIN webhook_endpoints AS e ON e.active AND event.type = ANY(e.events)
    """
)


async def emit_notification_events(
    session: AsyncSession, notification_ids: Sequence[uuid.UUID], states: Sequence[str]
) -> None:
    """`notification.<state>` for each of these notifications that is in one of `states`
    now and whose event is not recorded yet, in one statement."""
    await session.execute(
        _NOTIFICATION_EVENTS, {"ids": list(notification_ids), "states": list(states)}
    )


# Keyed by the authorisation row as it stood before: two accepts of one invitation are
# one event, and a patient who subscribes again after Imo dropped them is another.
_IMO_SUBSCRIBED = text(
    """
    WITH event AS (
        INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
        SELECT CAST(md5(concat_ws(':', 'imo.subscribed', v.patient_id, v.since)) AS uuid),
               'imo.subscribed', v.patient_id,
               jsonb_build_object('patient_id', v.patient_id, 'subscribed_at', now()),
               now()
        FROM unnest(CAST(:patient_ids AS text[]), CAST(:sinces AS text[]))
             AS v(patient_id, since)
        ON CONFLICT (id) DO NOTHING
        RETURNING id, type, patient_id, occurred_at
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id, occurred_at, state,
                                    next_attempt_at)
    SELECT event.id, e.name, event.patient_id, event.occurred_at, 'pending', event.occurred_at
    FROM event JOIN webhook_endpoints AS e ON e.active AND event.type = ANY(e.events)
    """
)


async def emit_imo_subscribed(session: AsyncSession, subscribed: Sequence[tuple[str, str]]) -> None:
    """`imo.subscribed` for each (patient, since), in one statement: once per `since`
    (what their authorisation was before: its status and when it last changed)."""
    await session.execute(
        _IMO_SUBSCRIBED,
        {
            "patient_ids": [patient_id for patient_id, _ in subscribed],
            "sinces": [since for _, since in subscribed],
        },
    )
