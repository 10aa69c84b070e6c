"""HTTP for email: the two SendGrid webhooks, and address status under /v1.

- `POST /callbacks/email/inbound-parse`: SendGrid Inbound Parse (raw mode), with HTTP
  Basic auth (SENDGRID_INBOUND_PARSE_USERNAME / _PASSWORD, put in the URL SendGrid is
  given). Answers 200 once the message is stored, whatever became of it (a 4xx would
  make SendGrid retry what will never change); 401 without the credentials, 400 for a
  post that is not a readable form with the raw message, 413 past
  EMAIL_INBOUND_MAX_BYTES.
- `POST /callbacks/email/events`: SendGrid's Event Webhook, its ECDSA signature checked
  (403 when wrong, stale or not configured, and nothing changes): address statuses,
  and the delivery attempts of the emails the events name (app/email/reports.py).
- `GET /v1/email-status/{address}`, `DELETE /v1/email-status/{address}`,
  `GET /v1/inbound-emails` (the unmatched ones).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.convertors import Convertor, register_url_convertor

from app.config import load_ec_public_key
from app.db.session import DbSession
from app.email import replies, reports, sendgrid
from app.email import status as email_status
from app.email.parsing import parse
from app.email.schemas import (
    EmailStatusOut,
    EventsAccepted,
    InboundAccepted,
    InboundEmailOut,
    InboundEmailPage,
)
from app.errors import AppError, Forbidden, PayloadTooLarge, Unauthorized
from app.messages import replies as patient_answers
from app.observability import CALLBACKS
from app.pagination import Cursor, Limit

log = logging.getLogger(__name__)

INBOUND_PARSE_PATH = "/callbacks/email/inbound-parse"
MAX_EVENT_BODY_BYTES = 4 * 1024 * 1024

callback_router = APIRouter(prefix="/callbacks/email", tags=["provider callbacks"])
router = APIRouter(tags=["email"])


class BadEmailWebhook(AppError):
    status_code = 400
    code = "bad_callback"


@callback_router.post(
    "/inbound-parse",
    summary="SendGrid Inbound Parse: an email to a reply or bounce address",
    responses={
        400: {"description": "Not a multipart form with the raw message"},
        401: {"description": "Missing or wrong HTTP Basic credentials"},
        413: {"description": "Larger than EMAIL_INBOUND_MAX_BYTES"},
    },
)
async def sendgrid_inbound_parse(request: Request, session: DbSession) -> InboundAccepted:
    settings = request.app.state.settings
    _check_basic_auth(request)
    try:
        post = await sendgrid.read_inbound_post(
            request.headers.get("content-type", ""),
            request.stream(),
            settings.email_inbound_max_bytes,
        )
    except sendgrid.TooLarge as exc:
        CALLBACKS.labels("sendgrid", "too_large").inc()
        raise PayloadTooLarge(str(exc)) from exc
    except sendgrid.BadWebhook as exc:
        CALLBACKS.labels("sendgrid", "bad_inbound").inc()
        raise BadEmailWebhook(str(exc)) from exc
    with post.raw:
        email = await asyncio.to_thread(parse, post.raw, settings.email_reply_languages)
    received = await replies.receive(
        session,
        settings,
        email,
        via="inbound_parse",
        envelope_recipients=post.envelope_recipients,
    )
    if received.answer_id is not None:
        # Committed before a worker is told: it must find the answer.
        await session.commit()
        await patient_answers.hand_on(request.app.state.redis, [received.answer_id])
    CALLBACKS.labels("sendgrid", f"inbound_{received.outcome}").inc()
    return InboundAccepted(outcome=received.outcome, reason=received.reason)


def _check_basic_auth(request: Request) -> None:
    settings = request.app.state.settings
    password = settings.sendgrid_inbound_parse_password.get_secret_value()
    if not password:
        CALLBACKS.labels("sendgrid", "inbound_not_configured").inc()
        raise Forbidden("inbound parse is not configured (SENDGRID_INBOUND_PARSE_PASSWORD)")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        user, _, given = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        user, given = "", ""
    expected_user = settings.sendgrid_inbound_parse_username
    ok = scheme.lower() == "basic" and hmac.compare_digest(
        f"{user}:{given}".encode(), f"{expected_user}:{password}".encode()
    )
    if not ok:
        CALLBACKS.labels("sendgrid", "bad_credentials").inc()
        raise Unauthorized("HTTP Basic credentials required (SENDGRID_INBOUND_PARSE_*)")


@callback_router.post(
    "/events",
    summary="SendGrid Event Webhook: deliveries, bounces, complaints, unsubscribes",
    responses={
        400: {"description": "Not a JSON array of events"},
        403: {"description": "A missing, wrong or stale signature; or no key configured"},
        413: {"description": "Body too large"},
    },
)
async def sendgrid_events(
    request: Request,
    session: DbSession,
    signature: Annotated[str | None, Header(alias=sendgrid.SIGNATURE_HEADER)] = None,
    timestamp: Annotated[str | None, Header(alias=sendgrid.TIMESTAMP_HEADER)] = None,
) -> EventsAccepted:
    settings = request.app.state.settings
    if not settings.sendgrid_event_public_key:
        CALLBACKS.labels("sendgrid", "events_not_configured").inc()
        raise Forbidden("event webhook is not configured (SENDGRID_EVENT_PUBLIC_KEY)")
    body = await request.body()
    if len(body) > MAX_EVENT_BODY_BYTES:
        raise PayloadTooLarge(f"event body larger than {MAX_EVENT_BODY_BYTES} bytes")
    key = _public_key(request, settings.sendgrid_event_public_key)
    if (
        not signature
        or not timestamp
        or not sendgrid.signature_valid(key, signature, timestamp, body)
    ):
        CALLBACKS.labels("sendgrid", "bad_signature").inc()
        raise Forbidden("invalid event webhook signature")
    if not sendgrid.timestamp_fresh(
        timestamp, datetime.now(UTC), settings.sendgrid_event_max_age_seconds
    ):
        CALLBACKS.labels("sendgrid", "stale_signature").inc()
        raise Forbidden("the signed timestamp is too far from now (a replay?)")
    try:
        batch = sendgrid.address_events(body, opens_are_reads=settings.email_opens_are_reads)
    except sendgrid.BadWebhook as exc:
        raise BadEmailWebhook(str(exc)) from exc
    # Addresses first, then attempts (and their notifications): the order every post
    # takes its locks in.
    recorded = await email_status.record(session, batch.events)
    applied = await reports.apply(session, batch.reports)
    if batch.unreadable:
        # Reported, not swallowed: SendGrid's format changed, or a post was odd.
        log.warning("unreadable SendGrid events", extra={"count": batch.unreadable})
    CALLBACKS.labels("sendgrid", "events").inc()
    return EventsAccepted(
        recorded=recorded, reports=applied, ignored=batch.ignored, unreadable=batch.unreadable
    )


def _public_key(request: Request, text: str) -> Any:
    """The key, loaded once per app (validated with the settings)."""
    cached = getattr(request.app.state, "sendgrid_event_key", None)
    if cached is None or cached[0] != text:
        cached = (text, load_ec_public_key(text))
        request.app.state.sendgrid_event_key = cached
    return cached[1]


class _Address(Convertor[str]):
    """Everything after the prefix, line breaks too: an address with a CR or LF in it
    (header injection) is then a 422 naming it, not a 404 of no route."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("address", _Address())

_ADDRESS_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"},
    422: {"description": "Not an email address, or a cursor this list did not hand out"},
}


@router.get(
    "/email-status/{address:address}",
    summary="An email address's deliverability and its history",
    description="The address URL-encoded (`rahim%40example.com`). `unknown` when "
    "nothing was heard of it.",
    responses=_ADDRESS_ERRORS,
)
async def get_email_status(
    address: str, session: DbSession, cursor: Cursor = None, limit: Limit = 50
) -> EmailStatusOut:
    return EmailStatusOut.from_page(await email_status.status(session, address, cursor, limit))


@router.delete(
    "/email-status/{address:address}",
    summary="Unblock an email address",
    description="The only way a `blocked` address is mailed again. Logged (the address "
    "masked) and written to its history. Unblocking one that is not blocked changes "
    "nothing.",
    responses=_ADDRESS_ERRORS,
)
async def unblock_email_address(
    address: str, request: Request, session: DbSession
) -> EmailStatusOut:
    by = f"api key {getattr(request.state, 'api_key_id', '?')}"
    await email_status.unblock(session, address, by=by)
    return EmailStatusOut.from_page(await email_status.status(session, address, None, 50))


@router.get(
    "/inbound-emails",
    summary="Inbound emails kept unmatched (bad token, unknown sender, ...), newest first",
    responses=_ADDRESS_ERRORS,
)
async def list_unmatched_emails(
    session: DbSession, cursor: Cursor = None, limit: Limit = 50
) -> InboundEmailPage:
    rows, next_cursor = await replies.unmatched(session, cursor, limit)
    return InboundEmailPage(
        items=[InboundEmailOut.from_model(r) for r in rows], next_cursor=next_cursor
    )
