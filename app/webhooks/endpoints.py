"""HTTP for webhook endpoints: subscribe, replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from app.db.session import DbSession
from app.webhooks import service as webhook_service
from app.webhooks.schemas import NAME_PATTERN, ReplayIn, ReplayOut, WebhookIn, WebhookOut

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
Name = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.put(
    "/{name}",
    summary="Create or replace a webhook endpoint (its secret is shown at creation only)",
    responses={
        **_ERRORS,
        200: {"description": "Replaced"},
        201: {"description": "Created, with its secret"},
        422: {"description": "Bad body, or a URL the service must not call"},
    },
)
async def put_webhook(
    name: Name, body: WebhookIn, request: Request, response: Response, session: DbSession
) -> WebhookOut:
    endpoint, created = await webhook_service.put_endpoint(
        session, request.app.state.settings, name, body.url, body.events, body.active
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return WebhookOut.from_model(endpoint, show_secret=created)


@router.post(
    "/{name}/replay",
    summary="Deliver an endpoint's events of a period again",
    responses={
        **_ERRORS,
        404: {"description": "No such endpoint"},
        422: {"description": "Bad body"},
    },
)
async def replay_webhook(name: Name, body: ReplayIn, session: DbSession) -> ReplayOut:
    queued = await webhook_service.replay(session, name, body.since, body.until, body.events)
    return ReplayOut(queued=queued)
