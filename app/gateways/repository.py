"""SQL for gateway phones, their queue and the SMS they receive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.gateways.protocol import CHANNEL, FORWARDED_TO_GATEWAY, TAKEN_BACK
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
    WHERE a.gateway_id = ANY(:ids)
    GROUP BY a.gateway_id, a.gateway_state
    """
)


async def list_with_stats(session: AsyncSession) -> list[GatewayStats]:
    """Every gateway, by name, with its attempts counted by state on the phone."""
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
class GatewayAttempt:
    id: int
    message_id: str
    gateway_state: str | None
    history: list[dict[str, Any]]


_LOCK_ATTEMPTS = text(
    f"""
    SELECT a.id, a.provider_message_id, a.gateway_state, a.state_history
    FROM delivery_attempts AS a
    WHERE a.channel = '{CHANNEL}' AND a.provider_message_id = ANY(:message_ids)
          AND a.gateway_id = :gateway_id
    ORDER BY a.id
    FOR UPDATE
    """  # noqa: S608 - constants only
)


async def lock_attempts(
    session: AsyncSession, gateway_id: int, message_ids: Sequence[str]
) -> dict[str, GatewayAttempt]:
    """This gateway's attempts among `message_ids`, locked, by message id."""
    if not message_ids:
        return {}
    rows = await session.execute(
        _LOCK_ATTEMPTS, {"gateway_id": gateway_id, "message_ids": list(set(message_ids))}
    )
    return {
        row.provider_message_id: GatewayAttempt(
            row.id, row.provider_message_id, row.gateway_state, row.state_history or []
        )
        for row in rows
    }


_WRITE_STATES = text(
    """
    UPDATE delivery_attempts AS a SET
        gateway_state = v.gateway_state, state_history = CAST(v.history AS jsonb),
        updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[]), CAST(:histories AS text[]))
        AS v(id, gateway_state, history)
    WHERE a.id = v.id
    """
)


async def write_states(session: AsyncSession, attempts: Sequence[GatewayAttempt]) -> None:
    if not attempts:
        return
    await session.execute(
        _WRITE_STATES,
        {
            "ids": [a.id for a in attempts],
            "states": [a.gateway_state for a in attempts],
            "histories": [orjson.dumps(a.history).decode() for a in attempts],
        },
    )


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
