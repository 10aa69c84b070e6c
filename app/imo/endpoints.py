"""HTTP for Imo invitation rounds and the authorisations they produce."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, status

from app.db.session import DbSession
from app.errors import NotFound
from app.imo import service as imo_service
from app.imo.schemas import AuthorizationSummaryOut, InvitationRunIn, InvitationRunOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/imo", tags=["imo"])

RUN_JOB = "run_invitation_round"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}


def run_job_id(round_id: int) -> str:
    return f"imo-invitation-round:{round_id}"


@router.post(
    "/invitations/run",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start an invitation round now",
    description="Creates the round and hands it to the workers, which invite in the "
    "patients' messaging windows at the account's rate. 409 while a round is running "
    "(`details` names it).",
    responses={**_ERRORS, 409: {"description": "A round is running already"}},
)
async def start_imo_invitation_round(
    request: Request,
    session: DbSession,
    body: Annotated[InvitationRunIn | None, Body()] = None,
) -> InvitationRunOut:
    now = datetime.now(UTC)
    round_ = await imo_service.start_round(
        session,
        request.app.state.settings,
        trigger="api",
        now=now,
        limit=body.limit if body else None,
    )
    # Committed before the job can look for it.
    await session.commit()
    try:
        await request.app.state.redis.enqueue_job(RUN_JOB, round_.id, _job_id=run_job_id(round_.id))
    except Exception:
        # Every worker also polls for a running round: it starts a little later.
        log.exception("could not enqueue the invitation round", extra={"round_id": round_.id})
    progress = await imo_service.round_progress(session, round_.id, now)
    assert progress is not None
    return InvitationRunOut.model_validate(progress)


@router.get(
    "/invitations/runs/{run_id}",
    summary="An invitation round's progress and counts by result",
    responses={**_ERRORS, 404: {"description": "No such round"}},
)
async def get_imo_invitation_round(
    run_id: Annotated[int, Path(ge=1, le=2**63 - 1)], session: DbSession
) -> InvitationRunOut:
    progress = await imo_service.round_progress(session, run_id, datetime.now(UTC))
    if progress is None:
        raise NotFound(f"no invitation round {run_id}")
    return InvitationRunOut.model_validate(progress)


@router.get(
    "/authorizations/summary",
    summary="Patients by Imo authorisation status",
    responses=_ERRORS,
)
async def get_imo_authorization_summary(session: DbSession) -> AuthorizationSummaryOut:
    total, by_status = await imo_service.authorization_summary(session)
    return AuthorizationSummaryOut.model_validate({"patients": total, "by_status": by_status})
