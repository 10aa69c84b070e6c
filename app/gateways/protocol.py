"""The cht-gateway wire protocol, as pure functions: what a poll's body says, and what
each status a phone reports means here. No I/O.

References: cht-gateway's README ("API") and cht-core's
`api/src/controllers/sms-gateway.js`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from app import phone
from app.channels import inbound
from app.channels.base import ChannelName
from app.states import AttemptStatus
from app.validation import storable_text

# Where an attempt stands on the phone's side (`gateway_state`). None: in its country's
# pool, waiting for a phone (app/channels/gateway.py queued it); `forwarded-to-gateway`:
# offered to one phone, and offered again on every poll until that phone acknowledges it.
FORWARDED_TO_GATEWAY = "forwarded-to-gateway"
UNRECOGNISED = "unrecognised"
# Taken back from a phone that stopped polling, and failed over to the next channel.
TAKEN_BACK = "taken-back"
# Left in its country's pool while no phone serving the country polled: failed over.
UNPOLLED = "unpolled"

# The phone's status words, and the state each records.
STATUS_STATES = {
    "UNSENT": "received-by-gateway",
    "PENDING": "forwarded-by-gateway",
    "SENT": "sent",
    "DELIVERED": "delivered",
    "FAILED": "failed",
}
# The phone's statuses that are also a provider report on the attempt.
STATUS_REPORTS = {
    "SENT": AttemptStatus.SENT,
    "DELIVERED": AttemptStatus.DELIVERED,
    "FAILED": AttemptStatus.FAILED,
}

# One poll answers at most this many messages (cht-core's limit).
MAX_OFFERED = 25
MAX_ID_CHARS = 100
MAX_SENDER_CHARS = 40


class ProtocolError(ValueError):
    """A body the protocol does not allow: answered 400 with the message."""


class BodyTooLarge(ProtocolError):
    """A gzip body that inflates past the request size limit: answered 413."""


@dataclass(frozen=True, slots=True)
class Incoming:
    id: str
    sender: str
    content: str
    sms_sent: datetime | None
    sms_received: datetime | None


@dataclass(frozen=True, slots=True)
class Update:
    id: str
    # None: the phone sent no status word (recorded `unrecognised`, as cht-core does).
    status: str | None
    reason: str | None

    @property
    def state(self) -> str:
        return STATUS_STATES.get(self.status or "", UNRECOGNISED)


@dataclass(frozen=True, slots=True)
class Poll:
    messages: list[Incoming]
    updates: list[Update]
    # Entries that broke the protocol, dropped while the rest of the batch stands.
    dropped: int


def decompress(body: bytes, max_bytes: int) -> bytes:
    """A gzip body, inflated to at most `max_bytes` (a zip bomb stops there)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise ProtocolError(f"body is not valid gzip: {error}") from error
    if len(inflated) > max_bytes:
        raise BodyTooLarge(f"body larger than {max_bytes} bytes once decompressed")
    if not inflater.eof:
        raise ProtocolError("body is truncated gzip")
    return inflated


def parse_poll(raw: bytes) -> Poll:
    """The body of a gateway's POST. Either list may be absent, null or empty; unknown
    fields are ignored; a malformed entry is dropped, the others stand."""
    if not raw.strip():
        return Poll([], [], 0)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise ProtocolError("body must be a JSON object")
    messages, updates, dropped = [], [], 0
    for entry in _list(body, "messages"):
        message = _incoming(entry)
        if message is None:
            dropped += 1
        else:
            messages.append(message)
    for entry in _list(body, "updates"):
        update = _update(entry)
        if update is None:
            dropped += 1
        else:
            updates.append(update)
    return Poll(messages, updates, dropped)


def _list(body: dict[str, object], key: str) -> list[object]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"`{key}` must be a list")
    return value


def _text(entry: dict[str, object], key: str, max_chars: int | None = None) -> str | None:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        return None
    if max_chars is not None and len(value) > max_chars:
        return None
    return storable_text(value)


def _moment(value: object) -> datetime | None:
    """cht-gateway's times: milliseconds since the epoch."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _incoming(entry: object) -> Incoming | None:
    if not isinstance(entry, dict):
        return None
    message_id = _text(entry, "id", MAX_ID_CHARS)
    sender = _text(entry, "from", MAX_SENDER_CHARS)
    content = entry.get("content")
    # cht-core drops a message without content, as without id or sender.
    if message_id is None or sender is None or not isinstance(content, str) or not content:
        return None
    return Incoming(
        message_id,
        sender,
        content.replace("\x00", ""),
        _moment(entry.get("sms_sent")),
        _moment(entry.get("sms_received")),
    )


def _update(entry: object) -> Update | None:
    if not isinstance(entry, dict):
        return None
    message_id = _text(entry, "id", MAX_ID_CHARS)
    if message_id is None:
        return None
    status = entry.get("status")
    reason = entry.get("reason")
    return Update(
        message_id,
        storable_text(status[:50]) if isinstance(status, str) and status else None,
        storable_text(reason[:500]) if isinstance(reason, str) else None,
    )


def sender_e164(raw: str, country: str | None) -> str:
    """The `from` of an SMS the phone received, in E.164. The app forwards what the
    network gave it: international (+880..., 880...), or national (01711...), which is
    read as a number of the gateway's country, as cht-core reads it with its own.
    Raises ValueError for anything that is not a phone number (an operator's "MPESA")."""
    number = raw.strip()
    if number.startswith("00"):
        number = "+" + number[2:]
    if country and not number.startswith("+"):
        try:
            return phone.to_e164(number, country)
        except phone.InvalidPhoneNumber:
            pass
    return inbound.sender_e164(number.replace(" ", "").replace("-", ""))


def history_entry(state: str, at: datetime, reason: str | None = None) -> dict[str, str]:
    entry = {"state": state, "at": at.isoformat()}
    if reason:
        entry["reason"] = reason
    return entry


# The channel name of gateway attempts (`delivery_attempts.channel`).
CHANNEL = ChannelName.GATEWAY.value
