"""SendGrid's two webhooks, read: the Event Webhook (signed with ECDSA) and Inbound Parse.

Event Webhook: SendGrid signs `timestamp + body` with ECDSA P-256 / SHA-256 and sends
the base64 DER signature in `X-Twilio-Email-Event-Webhook-Signature`, the timestamp in
`X-Twilio-Email-Event-Webhook-Timestamp`; the key to verify with is the one its
settings show (SENDGRID_EVENT_PUBLIC_KEY). The events that say something about an
address become `AddressEvent`s (app/email/rules.py); those that say something about
one email we sent (`delivered`, `bounce`, `dropped`, `deferred`, and `open` when
EMAIL_OPENS_ARE_READS) become `MessageReport`s, named by `smtp-id`: the Message-ID
the email went out with, in angle brackets, which the channel recorded as the
attempt's provider id. (`sg_message_id` is SendGrid's own id for the message, which
we never had: it names nothing of ours.) The rest are counted.

Inbound Parse, with "POST the raw, full MIME message" on: a multipart form whose
`email` field is the message and `envelope` the SMTP envelope (JSON). The body is
streamed: the message goes to a spooled file (memory up to 1 MiB, then disk), the
other fields are small and capped, and the whole is cut off past
EMAIL_INBOUND_MAX_BYTES: a 30 MB message is never held whole in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.email import addresses
from app.email.rules import AddressEvent, AddressEventKind, MessageReport
from app.states import AttemptStatus

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# Drops that say the address itself is refused (SendGrid's suppression lists); other
# drops (a message too large, a bad header) are about the message.
_ADDRESS_DROPS = ("bounced address", "spam reporting address", "unsubscribed address", "invalid")
SPOOL_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
RAW_FIELD = "email"
# No Message-ID of ours is longer (the attempt's column): a longer one is not ours.
MAX_MESSAGE_ID_CHARS = 100


class BadWebhook(ValueError):
    """A post that cannot be read: the message says why, for a 400."""


class TooLarge(ValueError):
    pass


def signature_valid(
    public_key: ec.EllipticCurvePublicKey, signature: str, timestamp: str, body: bytes
) -> bool:
    try:
        der = base64.b64decode(signature, validate=True)
        public_key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def timestamp_fresh(timestamp: str, now: datetime, max_age_seconds: int) -> bool:
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now.timestamp() - int(timestamp)) <= max_age_seconds


@dataclass(slots=True)
class EventBatch:
    events: list[AddressEvent] = field(default_factory=list)
    # What the events say of the emails they are about.
    reports: list[MessageReport] = field(default_factory=list)
    # Events about nothing we track (clicks, processed, opens unless they count, ...).
    ignored: int = 0
    # Events we could not read (no address, not an object): counted, reported.
    unreadable: int = 0


def address_events(body: bytes, *, opens_are_reads: bool = False) -> EventBatch:
    """The events of a verified post. Raises BadWebhook for a body that is not a JSON
    array."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadWebhook("the body is not JSON") from exc
    if not isinstance(items, list):
        raise BadWebhook("the body is not a JSON array of events")
    batch = EventBatch()
    for item in items:
        if not isinstance(item, dict):
            batch.unreadable += 1
            continue
        kind = _kind(item)
        event = _event(item, kind) if kind is not None else None
        if kind is not None and event is None:
            batch.unreadable += 1
            continue
        report = _message_report(item, opens_are_reads)
        if event is not None:
            batch.events.append(event)
        if report is not None:
            batch.reports.append(report)
        if event is None and report is None:
            batch.ignored += 1
    return batch


def _message_report(item: dict[str, Any], opens_are_reads: bool) -> MessageReport | None:
    """What the event says of the one email it is about, if it names one of ours."""
    name = item.get("event")
    if name == "delivered":
        status, failure = AttemptStatus.DELIVERED, None
    elif name == "bounce":
        # Either type: SendGrid gave up on this email (`blocked`, a refusal for now,
        # does not block the address, but this message is not delivered).
        status, failure = AttemptStatus.FAILED, "bounced"
    elif name == "dropped":
        status, failure = AttemptStatus.FAILED, "dropped by SendGrid"
    elif name == "deferred":
        # Still being tried: moves a `sent` attempt nowhere, kept in the raw report log
        # (an `unconfirmed` one learns that SendGrid has it: `sent`).
        status, failure = AttemptStatus.SENT, None
    elif name == "open" and opens_are_reads:
        status, failure = AttemptStatus.READ, None
    else:
        return None
    message_id = message_id_of(item.get("smtp-id"))
    if message_id is None:
        return None
    try:
        address = addresses.normalise(str(item.get("email", "")))
    except addresses.InvalidAddress:
        return None
    kind = item.get("type") if name == "bounce" else None
    detail = " ".join(
        str(item[key]) for key in ("reason", "response", "bounce_classification") if item.get(key)
    )
    code = item.get("status")
    return MessageReport(
        message_id,
        address,
        status,
        f"{name}:{kind}" if isinstance(kind, str) and kind else str(name),
        error_code=str(code)[:50] if code else None,
        detail=detail[:500] or None,
        failure=failure,
    )


def message_id_of(value: object) -> str | None:
    """A Message-ID header's value (`<id@host>`, or bare) as the channel records it:
    without angle brackets. None for what cannot be one of ours."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("<") and ">" in text:
        text = text[1 : text.index(">")]
    text = text.strip()
    if not text or len(text) > MAX_MESSAGE_ID_CHARS or any(c in text for c in "<> \t\r\n"):
        return None
    return text


def _kind(item: dict[str, Any]) -> AddressEventKind | None:
    name = item.get("event")
    if name == "delivered":
        return AddressEventKind.DELIVERED
    if name == "bounce":
        # `type`: `bounce` (permanent) or `blocked` (the receiver refused it for now).
        return (
            AddressEventKind.SOFT_BOUNCE
            if item.get("type") == "blocked"
            else AddressEventKind.HARD_BOUNCE
        )
    if name == "dropped":
        reason = str(item.get("reason", "")).lower()
        return AddressEventKind.DROPPED if reason.startswith(_ADDRESS_DROPS) else None
    if name == "spamreport":
        return AddressEventKind.COMPLAINT
    if name in ("unsubscribe", "group_unsubscribe"):
        return AddressEventKind.UNSUBSCRIBE
    return None


def _event(item: dict[str, Any], kind: AddressEventKind) -> AddressEvent | None:
    try:
        address = addresses.normalise(str(item.get("email", "")))
    except addresses.InvalidAddress:
        return None
    stamp = item.get("timestamp")
    if type(stamp) is not int or not 0 < stamp < 2**37:
        return None
    detail = " ".join(
        str(item[key]) for key in ("status", "reason", "bounce_classification") if item.get(key)
    )
    event_id = str(item.get("sg_event_id") or "")
    if not event_id or len(event_id) > 90:
        # No id (or an odd one): the event itself identifies it.
        event_id = hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return AddressEvent(
        address,
        kind,
        "sendgrid",
        datetime.fromtimestamp(stamp, UTC),
        detail[:300] or None,
        provider_event_id=f"sg:{event_id}",
    )


@dataclass(slots=True)
class InboundPost:
    raw: IO[bytes]
    envelope_recipients: list[str]
    size: int


async def read_inbound_post(
    content_type: str, chunks: AsyncIterator[bytes], max_bytes: int
) -> InboundPost:
    """Stream an Inbound Parse post. Raises BadWebhook (not a multipart form, or no raw
    message in it) or TooLarge (past `max_bytes`); the spooled file is closed then."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadWebhook("expected multipart/form-data (SendGrid Inbound Parse)")
    raw = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (handed over)
    fields: dict[str, bytearray] = {}
    state: dict[str, Any] = {"name": None, "header": b"", "headers": {}, "raw_seen": False}

    def on_part_begin() -> None:
        state["name"] = None
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] = data[start:end].lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        headers = state["headers"]
        headers[state["header"]] = headers.get(state["header"], b"") + data[start:end]

    def on_headers_finished() -> None:
        _, params = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == RAW_FIELD:
            state["raw_seen"] = True
        elif name in ("envelope",):
            fields[name] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        name = state["name"]
        if name == RAW_FIELD:
            raw.write(data[start:end])
        elif name in fields:
            kept = fields[name]
            if len(kept) + end - start > MAX_FIELD_BYTES:
                raise BadWebhook(f"the form field {name!r} is larger than {MAX_FIELD_BYTES} bytes")
            kept += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
        max_header_count=16,
    )
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"the post is larger than {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if not state["raw_seen"]:
            raise BadWebhook(
                "no raw message in the form: turn on 'POST the raw, full MIME message' "
                "in SendGrid's Inbound Parse settings"
            )
    except MultipartParseError as exc:
        raw.close()
        raise BadWebhook(f"the multipart form cannot be read: {exc}") from exc
    except (BadWebhook, TooLarge):
        raw.close()
        raise
    raw.seek(0)
    return InboundPost(raw, _envelope_to(fields.get("envelope")), size)


def _envelope_to(envelope: bytearray | None) -> list[str]:
    """SendGrid's `envelope` field: {"to": [...], "from": "..."}; what cannot be read
    is ignored (the To and Cc headers are read as well)."""
    if not envelope:
        return []
    try:
        data = orjson.loads(bytes(envelope))
    except orjson.JSONDecodeError:
        return []
    to = data.get("to") if isinstance(data, dict) else None
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list):
        return []
    return [str(address)[:300] for address in to[:50] if isinstance(address, str)]
