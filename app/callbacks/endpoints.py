"""Provider webhooks: authenticate, parse, then one service call. No rules here.

Imo cannot sign its callbacks, so each URL carries a signed token; Twilio's are checked
with X-Twilio-Signature, WhatsApp's (Cloud API) with X-Hub-Signature-256. Repeats are
answered 200 and change nothing; a WhatsApp webhook body accepted before is a replay,
refused with a 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel

from app import callback_urls
from app.channels import twilio_signature, whatsapp
from app.channels.twilio_sms import (
    normalised_status,
    parse_inbound,
    parse_status_callback,
    twiml_reply,
)
from app.db.session import DbSession
from app.delivery import provider_reports
from app.delivery.report_batcher import ReportBatcher, report_batcher
from app.delivery.types import Report
from app.errors import AppError, Forbidden, Gone, NotFound, PayloadTooLarge
from app.imo import service as imo_service
from app.messages import replies
from app.messages import service as message_service
from app.observability import CALLBACKS
from app.security import TokenSigner
from app.states import AttemptStatus
from app.validation import INT64_MAX

log = logging.getLogger(__name__)
router = APIRouter(prefix="/callbacks", tags=["provider callbacks"], include_in_schema=True)
Batcher = Annotated[ReportBatcher, Depends(report_batcher)]

MAX_CALLBACK_BYTES = 64 * 1024
# A WhatsApp webhook body accepted is remembered this long (Meta retries for up to 7 days
# only what was not accepted): the same signed body again is a replay.
WHATSAPP_REPLAY_SECONDS = 8 * 24 * 3600


class Accepted(BaseModel):
    status: str = "ok"
    changed: bool


class BadCallback(AppError):
    status_code = 400
    code = "bad_callback"


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_CALLBACK_BYTES:
        raise PayloadTooLarge(f"callback body larger than {MAX_CALLBACK_BYTES} bytes")
    return raw


async def _fields(request: Request) -> dict[str, str]:
    """A callback body as flat fields, whether it came as JSON or as a form."""
    raw = await _body(request)
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


def _message_id(value: str | None) -> str | None:
    """A provider's message id, refused when longer than any we store: cutting it would
    name another message. (Other over-long fields are cut and kept whole in the raw
    report log: see provider_reports.fitted.)"""
    if value is not None and len(value) > provider_reports.PROVIDER_MESSAGE_ID_CHARS:
        raise BadCallback(
            f"message id longer than {provider_reports.PROVIDER_MESSAGE_ID_CHARS} characters"
        )
    return value


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
    signed = callback_urls.read_invitation_token(_signer(request), token)
    if signed is None:
        CALLBACKS.labels("imo", "bad_token").inc()
        raise NotFound("unknown callback")
    patient_id, issued_at = signed
    days = request.app.state.settings.imo_callback_token_days
    if issued_at is not None and datetime.now(UTC) - issued_at > timedelta(days=days):
        CALLBACKS.labels("imo", "expired_token").inc()
        raise Gone(f"this invitation's callback expired after {days} days")
    fields = await _fields(request)
    if fields.get("event") != "accept_invite":
        CALLBACKS.labels("imo", "unknown_event").inc()
        raise BadCallback(f"unexpected event for an invitation: {fields.get('event')!r}")
    accepted = await imo_service.mark_subscribed(session, patient_id, invited_at=issued_at)
    if accepted is imo_service.Accept.UNKNOWN_PATIENT:
        raise NotFound("unknown patient")
    if accepted is imo_service.Accept.STALE:
        # Recorded (counted and logged), not applied: the patient's status changed
        # after this invitation, e.g. to `no_imo_account`; a replay must not undo it.
        CALLBACKS.labels("imo", "stale_accept").inc()
        log.info("stale Imo accept", extra={"patient_id": patient_id})
        return Accepted(changed=False)
    CALLBACKS.labels("imo", "accept_invite").inc()
    return Accepted(changed=True)


@router.post(
    "/imo/notifications/{token}",
    summary="Imo: a patient read a notification",
    responses={**_BAD_BODY, **_UNKNOWN},
)
async def imo_read_receipt(token: str, request: Request, batcher: Batcher) -> Accepted:
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
        provider_message_id=_message_id(fields.get("post_id") or None),
        provider_status="read_receipt",
    )
    try:
        changed = await batcher.submit(report)
    except provider_reports.UnknownAttempt as exc:
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
    attempt_id: Annotated[int, Path(ge=1, le=INT64_MAX)],
    request: Request,
    batcher: Batcher,
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
        provider_message_id=_message_id(reported.message_sid),
        provider_status=reported.message_status,
        error_code=reported.error_code,
        error_message=reported.error_message,
    )
    try:
        changed = await batcher.submit(report)
    except provider_reports.UnknownAttempt as exc:
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
    session: DbSession,
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> Response:
    """Stored once per MessageSid (Twilio retries); an answer to the sender, if any, is
    the TwiML `<Message>`, so it goes back on the number and channel the patient used."""
    fields = await _fields(request)
    _check_twilio_signature(request, fields, x_twilio_signature)
    try:
        incoming = parse_inbound(fields)
    except ValueError as exc:
        CALLBACKS.labels("twilio", "bad_inbound").inc()
        raise BadCallback(str(exc)) from exc
    received = await message_service.receive(session, request.app.state.settings, incoming)
    CALLBACKS.labels("twilio", "inbound").inc()
    return Response(twiml_reply(received.reply), media_type="text/xml")


@router.get(
    "/whatsapp",
    summary="WhatsApp: Meta's webhook verification handshake",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 403: {"description": "Wrong token"}},
)
async def whatsapp_verify(
    request: Request,
    mode: Annotated[str, Query(alias="hub.mode")] = "",
    verify_token: Annotated[str, Query(alias="hub.verify_token")] = "",
    challenge: Annotated[str, Query(alias="hub.challenge", max_length=200)] = "",
) -> Response:
    """Answers `hub.challenge` when `hub.verify_token` is WHATSAPP_VERIFY_TOKEN."""
    expected = request.app.state.settings.whatsapp_verify_token.get_secret_value()
    if (
        mode != "subscribe"
        or not expected
        or not hmac.compare_digest(verify_token.encode(), expected.encode())
    ):
        CALLBACKS.labels("whatsapp", "bad_verify_token").inc()
        raise Forbidden("webhook verification refused")
    return Response(challenge, media_type="text/plain")


@router.post(
    "/whatsapp",
    summary="WhatsApp (Cloud API): message statuses, many to a webhook",
    responses={403: {"description": "Unsigned, forged or replayed webhook"}},
)
async def whatsapp_statuses(
    request: Request,
    batcher: Batcher,
    session: DbSession,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Statuses go to the report batcher; patients' messages are stored (once per
    message id) and acted on like any inbound message. An answer the service has for the
    patient (a consent confirmation, the help text, the numbered list) is stored as an
    outgoing message and sent by a worker: the Cloud API takes no answer in the
    webhook's response."""
    raw = await _body(request)
    secret = request.app.state.settings.whatsapp_app_secret.get_secret_value()
    if not whatsapp.signature_is_valid(secret, raw, x_hub_signature_256 or ""):
        CALLBACKS.labels("whatsapp", "bad_signature").inc()
        raise Forbidden("invalid X-Hub-Signature-256")
    try:
        statuses = whatsapp.parse_statuses(raw)
        incoming = whatsapp.parse_messages(raw)
    except ValueError as exc:
        raise BadCallback(str(exc)) from exc
    reports = []
    for reported in statuses:
        status = reported.normalised
        if status == "unknown" or reported.attempt_id is None:
            # Another status (`deleted`, ...), or a message that is not one of ours.
            CALLBACKS.labels(
                "whatsapp", "unknown_status" if status == "unknown" else "not_ours"
            ).inc()
            continue
        reports.append(
            Report(
                reported.attempt_id,
                AttemptStatus(status),
                provider_message_id=_message_id(reported.message_id),
                provider_status=reported.status,
                error_code=reported.error_code,
                error_message=reported.error_message,
            )
        )
    replay_key = "whatsapp:webhook:" + hashlib.sha256(raw).hexdigest()
    if not await _first_time(request, replay_key):
        CALLBACKS.labels("whatsapp", "replayed").inc()
        raise Forbidden("this webhook was accepted before")
    answers = []
    try:
        for message in incoming:
            received = await message_service.receive(session, request.app.state.settings, message)
            CALLBACKS.labels("whatsapp", "inbound").inc()
            if received.reply and received.message_id is not None:
                answers.append(await replies.record(session, received.message_id, received.reply))
        if answers:
            # Committed before a worker is told: it must find them.
            await session.commit()
    except BaseException:
        await _forget(request, replay_key)
        raise
    await replies.hand_on(request.app.state.redis, answers)
    results = await asyncio.gather(
        *(batcher.submit(report) for report in reports), return_exceptions=True
    )
    changed = False
    for report, result in zip(reports, results, strict=True):
        if isinstance(result, provider_reports.UnknownAttempt):
            CALLBACKS.labels("whatsapp", "unknown_attempt").inc()
        elif isinstance(result, BaseException):
            # Not (all) applied: Meta's retry of this body must be let in.
            await _forget(request, replay_key)
            raise result
        else:
            changed = changed or result
            CALLBACKS.labels("whatsapp", report.status.value).inc()
    return Accepted(changed=changed)


async def _first_time(request: Request, key: str) -> bool:
    """Whether `key` is new (and now remembered). With Redis away, every body is let in:
    statuses only move forward, so a replay could change nothing anyway."""
    try:
        return bool(await request.app.state.redis.set(key, 1, nx=True, ex=WHATSAPP_REPLAY_SECONDS))
    except Exception as exc:  # Redis away: not worth losing statuses over
        log.warning("replay check unavailable: %s", type(exc).__name__)
        return True


async def _forget(request: Request, key: str) -> None:
    try:
        await request.app.state.redis.delete(key)
    except Exception as exc:
        log.warning("could not forget a webhook: %s", type(exc).__name__)
