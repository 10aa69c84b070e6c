"""WhatsApp: one channel, two providers behind it (WHATSAPP_PROVIDER).

- `cloud`: Meta's WhatsApp Business Cloud API, `POST {base}/{version}/{phone number id}/
  messages` with a Bearer token; statuses come back on the app's webhook, signed with
  `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the app secret), and carry our
  attempt id in `biz_opaque_callback_data`.
- `twilio`: the same templates through Twilio's Messages API (`whatsapp:+E164`
  addresses, Content SID and ContentVariables); statuses come through Twilio's status
  callbacks like SMS's, `read` included.

Outside the 24-hour customer-service window WhatsApp takes only pre-approved templates:
a message goes out as its template, and one whose template has no WhatsApp mapping is
refused before any request (`no_whatsapp_template`: the next channel is tried, nobody is
alerted). Inside the window (the claim found a WhatsApp message from the patient in the
last 24 hours: `OutgoingMessage.free_text_allowed`) the text goes as it is; a Cloud API
refusal for re-engagement (131047) then sends the template instead, when there is one.

The Cloud API has no status look-up: its lost webhooks are not reconciled (Meta retries a
webhook it could not deliver for up to 7 days). Through Twilio, `fetch_status` is SMS's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from app.channels import http, twilio_messages
from app.channels.base import (
    ChannelError,
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    ProviderStatus,
    SendResult,
    TransientChannelError,
    json_object,
    redact,
)
from app.channels.inbound import IncomingMessage, Media, sender_e164
from app.channels.twilio_messages import WHATSAPP_PREFIX, TwilioMessages
from app.logs import mask_phone

DETAIL_BODY_CHARS = 2_000
SIGNATURE_HEADER = "X-Hub-Signature-256"
NO_TEMPLATE = "no_whatsapp_template"

# Cloud API error codes, by what they mean for the message. Anything else is reported.
NOT_ON_WHATSAPP = "131026"  # message undeliverable: no WhatsApp account, or an old app
REENGAGEMENT = "131047"  # more than 24 h since the patient wrote: templates only
_ACCOUNT_LIMITED = frozenset({"130429", "131056", "4", "80007"})  # throughput, pair rate
_TEMPLATE_REJECTED = frozenset({"132000", "132001"})  # parameter count, no such template
_TRANSIENT = frozenset({"1", "2", "131000", "131016"})  # unknown error, service unavailable
_PERMANENT = frozenset(
    {
        "131008",  # required parameter missing
        "131009",  # parameter value invalid
        "131021",  # recipient cannot be the sender
        "131030",  # recipient not in the test number's allowed list
        "131031",  # business account locked
        "131051",  # unsupported message type
        "131052",  # media download error
        "131053",  # media upload error
    }
)

# The error codes, of either provider, that say a number has no WhatsApp.
NO_ACCOUNT_CODES = frozenset({NOT_ON_WHATSAPP}) | twilio_messages.NO_ACCOUNT_CODES
# ... and that say a template cannot be sent as it is.
TEMPLATE_REJECTED_CODES = _TEMPLATE_REJECTED | twilio_messages.TEMPLATE_REJECTED_CODES

# Cloud API statuses -> the service's delivery statuses.
_NORMALISED_STATUS = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
}


def _template_label(message: OutgoingMessage) -> str:
    template = message.whatsapp_template
    return f"{template.name}/{template.language}" if template else ""


def _no_template(message: OutgoingMessage, why: str) -> PermanentChannelError:
    return PermanentChannelError(
        f"not sent on WhatsApp: {why}; next channel",
        code=NO_TEMPLATE,
        detail={"locale": message.locale},
    )


class WhatsAppCloudChannel:
    """Sends template messages through the WhatsApp Business Cloud API (or the fake)."""

    name: ChannelName = ChannelName.WHATSAPP

    def __init__(
        self,
        *,
        base_url: str,
        api_version: str,
        phone_number_id: str,
        access_token: str,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/{api_version}/{phone_number_id}/messages"
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Content-Type": "application/json",
        }

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Raises TransientChannelError or PermanentChannelError, nothing else.

        A free text refused for re-engagement (131047) goes again as its template.
        """
        if message.free_text_allowed:
            try:
                return await self._post(message, template=False)
            except PermanentChannelError as exc:
                if exc.code != REENGAGEMENT or message.whatsapp_template is None:
                    raise
        if message.whatsapp_template is None:
            raise _no_template(message, "this reminder's template has no WhatsApp template")
        return await self._post(message, template=True)

    def _payload(self, message: OutgoingMessage, *, template: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.phone_e164.removeprefix("+"),
            # Echoed in every status of this message: how the webhook finds the attempt.
            "biz_opaque_callback_data": message.status_reference,
        }
        chosen = message.whatsapp_template
        if template and chosen is not None:
            components = []
            if chosen.parameters:
                components.append(
                    {
                        "type": "body",
                        "parameters": [{"type": "text", "text": p} for p in chosen.parameters],
                    }
                )
            payload["type"] = "template"
            payload["template"] = {
                "name": chosen.name,
                "language": {"code": chosen.language},
                "components": components,
            }
        else:
            payload["type"] = "text"
            payload["text"] = {"body": message.text, "preview_url": False}
        return payload

    async def _post(self, message: OutgoingMessage, *, template: bool) -> SendResult:
        payload = self._payload(message, template=template)
        answered = await http.post(
            self._session,
            self._url,
            data=orjson.dumps(payload),
            headers=self._headers,
            limit=self._timeout,
            provider="WhatsApp",
            request=self._request(message, payload),
        )
        status, raw = answered.status, answered.body
        answer = json_object(raw)
        if 200 <= status < 300 and answer is not None:
            messages = answer.get("messages")
            first = messages[0] if isinstance(messages, list) and messages else None
            if isinstance(first, dict) and isinstance(first.get("id"), str) and first["id"]:
                message_status = first.get("message_status")
                return SendResult(
                    provider_message_id=first["id"],
                    provider_status=message_status if isinstance(message_status, str) else "",
                )
        raise self._error(message, payload, status, raw, answer)

    def _error(
        self,
        message: OutgoingMessage,
        payload: dict[str, Any],
        status: int,
        raw: bytes,
        answer: dict[str, object] | None,
    ) -> ChannelError:
        body = redact(raw.decode("utf-8", "replace"), message)[:DETAIL_BODY_CHARS]
        detail = http.exchange(self._request(message, payload), status=status, body=body)
        common: dict[str, Any] = {"provider_status": str(status), "detail": detail}
        if 200 <= status < 300:
            return PermanentChannelError(
                f"WhatsApp answered {status} without a message id: it may have sent it",
                code="unexpected",
                unexpected=True,
                maybe_sent=True,
                **common,
            )
        error = answer.get("error") if answer is not None else None
        error = error if isinstance(error, dict) else {}
        raw_code = error.get("code")
        code = str(raw_code) if isinstance(raw_code, int) and not isinstance(raw_code, bool) else ""
        reason = f"WhatsApp answered {status}" + (f", code {code}" if code else "")
        text = error.get("message")
        if isinstance(text, str) and text:
            reason += ": " + redact(text, message)[:300]

        if status == 429 or code in _ACCOUNT_LIMITED:
            return TransientChannelError(
                reason, code=code or str(status), account_limited=True, **common
            )
        if status >= 500 or code in _TRANSIENT:
            return TransientChannelError(reason, code=code or "http_5xx", **common)
        if code == NOT_ON_WHATSAPP:
            return PermanentChannelError(reason, code=code, no_account=True, **common)
        if code in _TEMPLATE_REJECTED:
            return PermanentChannelError(
                reason, code=code, template_rejected=_template_label(message), **common
            )
        if code == REENGAGEMENT or code in _PERMANENT:
            return PermanentChannelError(reason, code=code, **common)
        return PermanentChannelError(
            reason + ", outside WhatsApp's known answers",
            code="unexpected",
            unexpected=True,
            **common,
        )

    def _request(self, message: OutgoingMessage, payload: dict[str, Any]) -> dict[str, object]:
        """The request for Sentry: the number masked, no text, no parameter values."""
        request: dict[str, object] = {
            "url": self._url,
            "to": mask_phone(message.phone_e164),
            "type": payload["type"],
        }
        chosen = message.whatsapp_template
        if payload["type"] == "template" and chosen is not None:
            request["template"] = {
                "name": chosen.name,
                "language": chosen.language,
                "parameters": len(chosen.parameters),
            }
        else:
            request["text"] = {"length": len(message.text)}
        return request


class WhatsAppTwilioChannel:
    """Sends the same templates through Twilio (Content API), for deployments whose
    WhatsApp sender lives in a Twilio account."""

    name: ChannelName = ChannelName.WHATSAPP

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        if not sender:
            raise ValueError("WhatsAppTwilioChannel needs a WhatsApp sender number")
        self._messages = TwilioMessages(
            base_url=base_url,
            account_sid=account_sid,
            auth_token=auth_token,
            session=session,
            timeout=timeout,
        )
        self.base_url = self._messages.base_url
        self._sender = WHATSAPP_PREFIX + sender.removeprefix(WHATSAPP_PREFIX)

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Raises TransientChannelError or PermanentChannelError, nothing else."""
        form = {"To": WHATSAPP_PREFIX + message.phone_e164, "From": self._sender}
        chosen = message.whatsapp_template
        if message.free_text_allowed:
            form["Body"] = message.text
        elif chosen is None:
            raise _no_template(message, "this reminder's template has no WhatsApp template")
        elif not chosen.content_sid:
            raise _no_template(message, "its WhatsApp template has no Twilio content_sid")
        else:
            form["ContentSid"] = chosen.content_sid
            variables = {str(i): value for i, value in enumerate(chosen.parameters, start=1)}
            form["ContentVariables"] = orjson.dumps(variables).decode()
        if message.callback_url:
            form["StatusCallback"] = message.callback_url
        return await self._messages.create(form, message)

    async def fetch_status(self, provider_message_id: str) -> ProviderStatus:
        """`StatusLookup`: the message's status at Twilio, as for SMS. (The Cloud API has
        no look-up: its channel is not reconciled.)"""
        return await self._messages.fetch_status(provider_message_id)


# --- the Cloud API's webhooks ----------------------------------------------------------


def signature(app_secret: str, raw_body: bytes) -> str:
    """`X-Hub-Signature-256` of a body: `sha256=` and the hex HMAC-SHA256."""
    digest = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_is_valid(app_secret: str, raw_body: bytes, header: str) -> bool:
    """Constant-time check of `X-Hub-Signature-256`; False without a secret."""
    if not app_secret or not header:
        return False
    return hmac.compare_digest(signature(app_secret, raw_body).encode(), header.encode())


@dataclass(frozen=True, slots=True)
class WhatsAppStatus:
    """One status of one message, from a Cloud API webhook."""

    message_id: str
    status: str
    # Our attempt id, echoed from `biz_opaque_callback_data`; None when absent or not ours.
    attempt_id: int | None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def normalised(self) -> str:
        """`sent`, `delivered`, `read`, `failed`, or `unknown` for anything else."""
        return _NORMALISED_STATUS.get(self.status, "unknown")


def _values(raw_body: bytes) -> list[dict[str, Any]]:
    """The `value` of every change in a webhook. Raises ValueError for a body that is not
    a WhatsApp Business Account webhook."""
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("webhook body is not JSON") from exc
    if not isinstance(data, dict) or data.get("object") != "whatsapp_business_account":
        raise ValueError("not a whatsapp_business_account webhook")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise ValueError("webhook without entries")
    values = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                values.append(value)
    return values


def parse_statuses(raw_body: bytes) -> list[WhatsAppStatus]:
    """Every message status in a webhook (one may carry many; inbound messages are
    parse_messages'). Raises ValueError for a body that is not a WhatsApp Business
    Account webhook."""
    statuses: list[WhatsAppStatus] = []
    for value in _values(raw_body):
        reported = value.get("statuses")
        for item in reported if isinstance(reported, list) else ():
            statuses.append(_status(item))
    return statuses


# Message types whose content stays with Meta: kept as (mime type, media id).
_MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


def parse_messages(raw_body: bytes) -> list[IncomingMessage]:
    """Every message a patient sent, in a webhook. Raises ValueError for a body that is
    not a WhatsApp Business Account webhook, or a message without id or sender."""
    messages: list[IncomingMessage] = []
    for value in _values(raw_body):
        received = value.get("messages")
        for item in received if isinstance(received, list) else ():
            messages.append(_incoming(item))
    return messages


def _incoming(item: object) -> IncomingMessage:
    if not isinstance(item, dict):
        raise ValueError("a message that is not an object")
    message_id, sender, kind = item.get("id"), item.get("from"), item.get("type")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("a message without an id")
    if not isinstance(sender, str):
        raise ValueError("a message without a sender")
    body = item.get(kind) if isinstance(kind, str) else None
    body = body if isinstance(body, dict) else {}
    text = ""
    if kind == "text":
        text = str(body.get("body") or "")
    elif kind == "button":
        text = str(body.get("text") or "")
    elif kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        text = str(reply.get("title") or "") if isinstance(reply, dict) else ""
    media: tuple[Media, ...] = ()
    if kind in _MEDIA_TYPES:
        text = str(body.get("caption") or "")
        media = (Media(str(body.get("mime_type") or kind)[:100], str(body.get("id") or "")[:200]),)
    stamp = item.get("timestamp")
    received_at = (
        datetime.fromtimestamp(int(stamp), UTC)
        if isinstance(stamp, str) and stamp.isdigit() and len(stamp) <= 12
        else None
    )
    return IncomingMessage(
        channel=ChannelName.WHATSAPP,
        provider_message_id=message_id[:100],
        sender_e164=sender_e164(sender),
        text=text,
        media=media,
        received_at=received_at,
    )


def _status(item: object) -> WhatsAppStatus:
    if not isinstance(item, dict):
        raise ValueError("a status that is not an object")
    message_id, status = item.get("id"), item.get("status")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("a status without a message id")
    if not isinstance(status, str) or not status:
        raise ValueError("a status without a status")
    opaque = item.get("biz_opaque_callback_data")
    attempt_id = int(opaque) if isinstance(opaque, str) and opaque.isdigit() else None
    error_code = error_message = None
    errors = item.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        error_code = str(code) if code is not None else None
        title = errors[0].get("title") or errors[0].get("message")
        error_message = str(title)[:500] if title else None
    return WhatsAppStatus(message_id, status.lower(), attempt_id, error_code, error_message)


__all__ = [
    "NO_ACCOUNT_CODES",
    "TEMPLATE_REJECTED_CODES",
    "WhatsAppCloudChannel",
    "WhatsAppStatus",
    "WhatsAppTwilioChannel",
    "parse_messages",
    "parse_statuses",
    "signature",
    "signature_is_valid",
]
