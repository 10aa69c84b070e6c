"""HTTP for broadcasts."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status

from app import idempotency
from app.broadcasts import service as broadcast_service
from app.broadcasts.schemas import BroadcastIn, BroadcastOut
from app.db.session import DbSession
from app.idempotency import IdempotencyKey

router = APIRouter(prefix="/broadcasts", tags=["broadcasts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send one message to every member of a group",
    description="Answers at once; the worker schedules one notification per member (see "
    "`progress`). Each goes through consent, the messaging window and rate limits like "
    "any notification. A filter group's members are those matching it now.",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "Bad body, unknown template, unfilled variable"},
    },
)
async def start_broadcast(
    body: BroadcastIn,
    request: Request,
    response: Response,
    session: DbSession,
    idempotency_key: IdempotencyKey = None,
) -> BroadcastOut:
    broadcast, created = await broadcast_service.start(
        session,
        body,
        api_key_id=request.state.api_key_id,
        idempotency_key=idempotency.checked(idempotency_key),
    )
    if created:
        # Committed before the job is queued: the worker must find the row.
        await session.commit()
        await request.app.state.redis.enqueue_job(
            broadcast_service.FAN_OUT_JOB,
            str(broadcast.id),
            _job_id=broadcast_service.fan_out_job_id(broadcast.id),
        )
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return await _answer(session, broadcast.id)


@router.get(
    "/{broadcast_id}",
    summary="A broadcast and its progress",
    responses={**_ERRORS, 404: {"description": "No such broadcast"}},
)
async def get_broadcast(broadcast_id: uuid.UUID, session: DbSession) -> BroadcastOut:
    return await _answer(session, broadcast_id)


@router.post(
    "/{broadcast_id}/cancel",
    summary="Stop a broadcast: its messages not sent yet end `cleared`",
    responses={**_ERRORS, 404: {"description": "No such broadcast"}},
)
async def cancel_broadcast(broadcast_id: uuid.UUID, session: DbSession) -> BroadcastOut:
    await broadcast_service.cancel(session, broadcast_id)
    return await _answer(session, broadcast_id)


async def _answer(session: DbSession, broadcast_id: uuid.UUID) -> BroadcastOut:
    broadcast, progress = await broadcast_service.get(session, broadcast_id)
    return BroadcastOut.from_model(broadcast, progress.members, progress.counts)
