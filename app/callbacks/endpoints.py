"""Provider webhooks: authenticate, parse, then one service call. No rules here.

Imo cannot sign its callbacks, so each URL carries a signed token; Twilio's are checked
with X-Twilio-Signature. Repeats are answered 200 and change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel

from app import callback_urls
from app.channels import twilio_signature
from app.channels.twilio_sms import normalised_status, parse_status_callback
from app.db.session import DbSession
from app.delivery import status as delivery_status
from app.delivery.types import Report
from app.errors import AppError, Forbidden, NotFound, PayloadTooLarge
from app.imo import service as imo_service
from app.observability import CALLBACKS
from app.security import TokenSigner
from app.states import AttemptStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/callbacks", tags=["provider callbacks"], include_in_schema=True)

MAX_CALLBACK_BYTES = 64 * 1024


class Accepted(BaseModel):
    status: str = "ok"
    changed: bool


class BadCallback(AppError):
    status_code = 400
    code = "bad_callback"


async def _fields(request: Request) -> dict[str, str]:
    """A callback body as flat fields, whether it came as JSON or as a form."""
    raw = await request.body()
    if len(raw) > MAX_CALLBACK_BYTES:
        raise PayloadTooLarge(f"callback body larger than {MAX_CALLBACK_BYTES} bytes")
    stripped = raw.strip()
    if stripped.startswith(b"{"):
        try:
            data = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise BadCallback("callback body is not valid JSON") from exc
        return {str(k): str(v) for k, v in data.items() if v is not None}
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise BadCallback("callback body is not text") from exc


_BAD_BODY: dict[int | str, dict[str, Any]] = {400: {"description": "A body that cannot be read"}}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"description": "A token this service did not sign, or an unknown message"}
}
_UNSIGNED: dict[int | str, dict[str, Any]] = {403: {"description": "A wrong Twilio signature"}}


def _signer(request: Request) -> TokenSigner:
    return TokenSigner(request.app.state.settings.secret_key.get_secret_value())


@router.post(
    "/imo/invitations/{token}",
    summary="Imo: a patient accepted the invitation",
    responses={**_BAD_BODY, **_UNKNOWN},
)
async def imo_invitation(token: str, request: Request, session: DbSession) -> Accepted:
    patient_id = _signer(request).verify(callback_urls.IMO_INVITATION, token)
    if patient_id is None:
        CALLBACKS.labels("imo", "bad_token").inc()
        raise NotFound("unknown callback")
    fields = await _fields(request)
    if fields.get("event") != "accept_invite":
        CALLBACKS.labels("imo", "unknown_event").inc()
        raise BadCallback(f"unexpected event for an invitation: {fields.get('event')!r}")
    if not await imo_service.mark_subscribed(session, patient_id):
        raise NotFound("unknown patient")
    CALLBACKS.labels("imo", "accept_invite").inc()
    return Accepted(changed=True)


@router.post(
    "/imo/notifications/{token}",
    summary="Imo: a patient read a notification",
    responses={**_BAD_BODY, **_UNKNOWN},
)
async def imo_read_receipt(token: str, request: Request) -> Accepted:
    attempt = _signer(request).verify(callback_urls.IMO_READ, token)
    if attempt is None or not attempt.isdigit():
        CALLBACKS.labels("imo", "bad_token").inc()
        raise NotFound("unknown callback")
    fields = await _fields(request)
    if fields.get("event") != "read_receipt":
        CALLBACKS.labels("imo", "unknown_event").inc()
        raise BadCallback(f"unexpected event for a notification: {fields.get('event')!r}")
    report = Report(
        int(attempt),
        AttemptStatus.READ,
        provider_message_id=fields.get("post_id") or None,
        provider_status="read_receipt",
    )
    try:
        changed = await request.app.state.reports.submit(report)
    except delivery_status.UnknownAttempt as exc:
        CALLBACKS.labels("imo", "unknown_attempt").inc()
        raise NotFound("unknown message") from exc
    CALLBACKS.labels("imo", "read_receipt").inc()
    return Accepted(changed=changed)


def _check_twilio_signature(
    request: Request, params: Mapping[str, str], signature: str | None
) -> None:
    settings = request.app.state.settings
    # Twilio signs the URL it was given: ours, as built from PUBLIC_BASE_URL.
    url = settings.callback_base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    token = settings.twilio_auth_token.get_secret_value()
    if not token or not twilio_signature.is_valid(token, url, params, signature or ""):
        CALLBACKS.labels("twilio", "bad_signature").inc()
        raise Forbidden("invalid Twilio signature")


@router.post(
    "/twilio/status/{attempt_id}",
    summary="Twilio: a message's delivery status",
    responses={**_BAD_BODY, **_UNSIGNED, **_UNKNOWN},
)
async def twilio_status(
    attempt_id: int,
    request: Request,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Accepted:
    fields = await _fields(request)
    _check_twilio_signature(request, fields, x_twilio_signature)
    try:
        reported = parse_status_callback(fields)
    except ValueError as exc:
        raise BadCallback(str(exc)) from exc
    status = normalised_status(reported.message_status)
    if status == "unknown":
        CALLBACKS.labels("twilio", "unknown_status").inc()
        log.warning("unknown Twilio status", extra={"status": reported.message_status[:40]})
        return Accepted(changed=False)
    report = Report(
        attempt_id,
        AttemptStatus(status),
        provider_message_id=reported.message_sid,
        provider_status=reported.message_status,
        error_code=reported.error_code,
        error_message=reported.error_message,
    )
    try:
        changed = await request.app.state.reports.submit(report)
    except delivery_status.UnknownAttempt as exc:
        CALLBACKS.labels("twilio", "unknown_attempt").inc()
        raise NotFound("unknown message") from exc
    CALLBACKS.labels("twilio", status).inc()
    return Accepted(changed=changed)


@router.post(
    "/twilio/inbound",
    summary="Twilio: a message from a patient",
    responses={**_BAD_BODY, **_UNSIGNED},
)
async def twilio_inbound(
    request: Request,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    fields = await _fields(request)
    _check_twilio_signature(request, fields, x_twilio_signature)
    # Two-way messaging is not built yet: acknowledge, count, and keep no text.
    CALLBACKS.labels("twilio", "inbound").inc()
    log.info("inbound message", extra={"message_sid": fields.get("MessageSid", "")[:64]})
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response/>', media_type="text/xml")
