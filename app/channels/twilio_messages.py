"""Twilio's Messages API, shared by every channel Twilio carries (SMS, WhatsApp).

aiohttp directly rather than Twilio's SDK: its sync client must never run on the event
loop, its REST layer cannot easily be pointed at the fake, and aiohttp was measured
far faster than httpx on this hot path.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from app.channels import http
from app.channels.base import (
    ChannelError,
    MessageNotFound,
    OutgoingMessage,
    PermanentChannelError,
    ProviderStatus,
    SendResult,
    TransientChannelError,
    basic_auth,
    json_object,
    redact,
)
from app.logs import mask_phone

API_VERSION = "2010-04-01"
DETAIL_BODY_CHARS = 2_000
WHATSAPP_PREFIX = "whatsapp:"


class _Outcome(enum.Enum):
    RECIPIENT_INVALID = "recipient_invalid"
    OPTED_OUT = "opted_out"
    NO_ACCOUNT = "no_account"
    TEMPLATE_REJECTED = "template_rejected"
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    ACCOUNT_LIMITED = "account_limited"


# Twilio error codes whose meaning differs from their HTTP status. Any other 4xx with a
# Twilio code is permanent; a newly seen code that means something else is one line here.
_OUTCOME_BY_CODE: dict[int, _Outcome] = {
    21211: _Outcome.RECIPIENT_INVALID,  # the 'To' number is not a valid phone number
    21614: _Outcome.RECIPIENT_INVALID,  # the 'To' number is not a mobile number
    21610: _Outcome.OPTED_OUT,  # the recipient replied STOP to this sender
    20429: _Outcome.TRANSIENT,  # too many requests
    21611: _Outcome.TRANSIENT,  # the 'From' number's queue is full: later is fine
    # WhatsApp through Twilio:
    63003: _Outcome.NO_ACCOUNT,  # channel could not find the To address (no WhatsApp)
    63024: _Outcome.NO_ACCOUNT,  # invalid message recipient
    63018: _Outcome.ACCOUNT_LIMITED,  # rate limit exceeded for the WhatsApp sender
    63027: _Outcome.TEMPLATE_REJECTED,  # template does not exist for this language
    63028: _Outcome.TEMPLATE_REJECTED,  # parameters do not match the template's
}


# Twilio's message statuses -> the service's delivery statuses (callbacks and look-ups).
_NORMALISED_STATUS = {
    "accepted": "sending",
    "scheduled": "sending",
    "queued": "sending",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "failed",
}

# Twilio's message sids: SM (SMS) or MM (media, WhatsApp) and 32 hex digits. Anything else
# is not looked up: it would be a path of our own making.
_MESSAGE_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")


def normalised_status(message_status: str) -> str:
    """`sending`, `sent`, `delivered`, `read`, `failed`, or `unknown` for anything else."""
    return _NORMALISED_STATUS.get(message_status.strip().lower(), "unknown")


def _codes(outcome: _Outcome) -> frozenset[str]:
    return frozenset(str(code) for code, known in _OUTCOME_BY_CODE.items() if known is outcome)


# The codes above as status callbacks carry them (ErrorCode), for WhatsApp's rules.
NO_ACCOUNT_CODES = _codes(_Outcome.NO_ACCOUNT)
TEMPLATE_REJECTED_CODES = _codes(_Outcome.TEMPLATE_REJECTED)


class TwilioMessages:
    """One Twilio account's `Messages.json`: sends a form, maps every answer into the
    channel errors. The channels build the form; this knows Twilio's answers."""

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {
            "Authorization": basic_auth(account_sid, auth_token),
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }

    async def create(self, form: Mapping[str, str], message: OutgoingMessage) -> SendResult:
        """POST one message. Raises TransientChannelError or PermanentChannelError."""
        answered = await http.post(
            self._session,
            self._url,
            data=urlencode(form).encode(),
            headers=self._headers,
            limit=self._timeout,
            provider="Twilio",
            request=self._request(message, form),
        )
        status, raw = answered.status, answered.body
        answer = json_object(raw)
        if 200 <= status < 300 and answer is not None:
            sid = answer.get("sid")
            provider_status = answer.get("status")
            if isinstance(sid, str) and sid:
                return SendResult(
                    provider_message_id=sid,
                    provider_status=provider_status if isinstance(provider_status, str) else "",
                )
        raise self._error(message, form, status, raw, answer, answered.retry_after)

    async def fetch_status(self, sid: str) -> ProviderStatus:
        """`GET Messages/{sid}.json`: the message's status now, for the reconciler when a
        status callback never came. Raises MessageNotFound (Twilio does not know it: 404,
        or not a sid at all), TransientChannelError (time-out, 429, 5xx) or
        PermanentChannelError (anything else, `unexpected`)."""
        if not _MESSAGE_SID.fullmatch(sid):
            raise MessageNotFound(f"{sid[:40]!r} is not a Twilio message sid", code="not_a_sid")
        url = f"{self._url.removesuffix('.json')}/{sid}.json"
        request: dict[str, object] = {"method": "GET", "url": url}
        answered = await http.get(
            self._session,
            url,
            headers=self._headers,
            limit=self._timeout,
            provider="Twilio",
            request=request,
        )
        status, answer = answered.status, json_object(answered.body)
        if status == 200 and answer is not None:
            message_status = answer.get("status")
            if answer.get("sid") == sid and isinstance(message_status, str) and message_status:
                error_code = answer.get("error_code")
                error_message = answer.get("error_message")
                return ProviderStatus(
                    provider_message_id=sid,
                    status=normalised_status(message_status),
                    provider_status=message_status,
                    error_code=None if error_code is None else str(error_code),
                    error_message=error_message if isinstance(error_message, str) else None,
                )
        code = answer.get("code") if answer is not None else None
        reason = f"Twilio answered {status}" + (f", code {code}" if code else "")
        # Status and code only: a message resource holds the patient's number and text.
        common: dict[str, Any] = {
            "provider_status": str(status),
            "detail": {
                "request": request,
                "response": {"status": status, "code": code, "json": answer is not None},
            },
        }
        if status == 404:
            raise MessageNotFound(reason, code=str(code or 404), **common)
        if status == 429 or status >= 500:
            raise TransientChannelError(reason, code=str(code or status), **common)
        raise PermanentChannelError(
            reason + ", outside Twilio's known answers",
            code="unexpected",
            unexpected=True,
            **common,
        )

    def _error(
        self,
        message: OutgoingMessage,
        form: Mapping[str, str],
        status: int,
        raw: bytes,
        answer: dict[str, object] | None,
        retry_after: str | None,
    ) -> ChannelError:
        """The error for any answer but a 2xx with a sid, by `_OUTCOME_BY_CODE`."""
        body = redact(raw.decode("utf-8", "replace"), message)[:DETAIL_BODY_CHARS]
        detail = http.exchange(self._request(message, form), status=status, body=body)
        common: dict[str, Any] = {"provider_status": str(status), "detail": detail}
        if 200 <= status < 300:
            return PermanentChannelError(
                f"Twilio answered {status} without a message sid: it may have sent it",
                code="unexpected",
                unexpected=True,
                maybe_sent=True,
                **common,
            )

        code = answer.get("code") if answer is not None else None
        twilio_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        reason = f"Twilio answered {status}" + (f", code {twilio_code}" if twilio_code else "")
        text = answer.get("message") if answer is not None else None
        if isinstance(text, str) and text:
            # Twilio's messages may quote the number: keep it out of the error text too.
            reason += ": " + redact(text, message)

        outcome = _OUTCOME_BY_CODE.get(twilio_code) if twilio_code else None
        if status == 429 or outcome in (_Outcome.TRANSIENT, _Outcome.ACCOUNT_LIMITED):
            return TransientChannelError(
                reason,
                code=str(twilio_code or status),
                retry_after=_retry_after_seconds(retry_after),
                account_limited=outcome is _Outcome.ACCOUNT_LIMITED,
                **common,
            )
        if status >= 500:
            return TransientChannelError(reason, code="http_5xx", **common)
        if 400 <= status < 500 and twilio_code:
            template = form.get("ContentSid", "")
            return PermanentChannelError(
                reason,
                code=str(twilio_code),
                recipient_invalid=outcome is _Outcome.RECIPIENT_INVALID,
                opted_out=outcome is _Outcome.OPTED_OUT,
                no_account=outcome is _Outcome.NO_ACCOUNT,
                template_rejected=template if outcome is _Outcome.TEMPLATE_REJECTED else "",
                **common,
            )
        return PermanentChannelError(
            reason + ", outside Twilio's known answers",
            code="unexpected",
            unexpected=True,
            **common,
        )

    def _request(self, message: OutgoingMessage, form: Mapping[str, str]) -> dict[str, object]:
        """The request for Sentry: the number masked, texts and variables by length."""
        request: dict[str, object] = {"url": self._url}
        for name, value in form.items():
            if name == "To":
                prefix = WHATSAPP_PREFIX if value.startswith(WHATSAPP_PREFIX) else ""
                request[name] = prefix + mask_phone(value.removeprefix(WHATSAPP_PREFIX))
            elif name in ("Body", "ContentVariables"):
                request[name] = {"length": len(value)}
            elif name == "StatusCallback":
                # Without its query string, which may carry a token.
                callback = urlsplit(value)
                request[name] = f"{callback.scheme}://{callback.netloc}{callback.path}"
            else:
                request[name] = value
        request.setdefault("StatusCallback", "")
        return request


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
