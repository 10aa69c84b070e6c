"""Twilio SMS: the fallback channel, and the common path.

aiohttp directly rather than Twilio's SDK: its sync client must never run on the event
loop, its REST layer cannot easily be pointed at the fake, and aiohttp was measured
far faster than httpx on this hot path.
"""

from __future__ import annotations

import enum
import itertools
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from app.channels.base import (
    ChannelError,
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    ProviderStatus,
    SendResult,
    TransientChannelError,
    basic_auth,
    json_object,
)
from app.channels.twilio_lookup import TwilioStatusLookup
from app.logs import mask_phone

API_VERSION = "2010-04-01"
DETAIL_BODY_CHARS = 2_000


class _Outcome(enum.Enum):
    RECIPIENT_INVALID = "recipient_invalid"
    PERMANENT = "permanent"
    TRANSIENT = "transient"


# Twilio error codes whose meaning differs from their HTTP status. Any other 4xx with a
# Twilio code is permanent; a newly seen code that means something else is one line here.
_OUTCOME_BY_CODE: dict[int, _Outcome] = {
    21211: _Outcome.RECIPIENT_INVALID,  # the 'To' number is not a valid phone number
    21614: _Outcome.RECIPIENT_INVALID,  # the 'To' number is not a mobile number
    20429: _Outcome.TRANSIENT,  # too many requests
    21611: _Outcome.TRANSIENT,  # the 'From' number's queue is full: later is fine
}

# Twilio's message statuses -> the service's delivery statuses.
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


def normalised_status(message_status: str) -> str:
    """`sending`, `sent`, `delivered`, `read`, `failed`, or `unknown` for anything else."""
    return _NORMALISED_STATUS.get(message_status.strip().lower(), "unknown")


@dataclass(frozen=True, slots=True)
class TwilioStatus:
    message_sid: str
    message_status: str
    error_code: str | None = None
    error_message: str | None = None


def parse_status_callback(params: Mapping[str, str]) -> TwilioStatus:
    """A status callback's form. Raises ValueError without MessageSid or MessageStatus.

    Older Twilio callbacks name them SmsSid and SmsStatus; those are accepted too.
    """
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if not sid:
        raise ValueError("status callback without MessageSid")
    if not status:
        raise ValueError("status callback without MessageStatus")
    return TwilioStatus(
        message_sid=sid,
        message_status=status,
        error_code=params.get("ErrorCode") or None,
        error_message=params.get("ErrorMessage") or None,
    )


class TwilioSmsChannel:
    """Sends SMS through Twilio's Messages API (or the fake, which speaks the same).

    Senders are used in turn; a message with a `reference` always gets the same sender,
    so a retry keeps its sender (and its place in the recipient's SMS thread).
    """

    name: ChannelName = ChannelName.SMS

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        senders: Sequence[str],
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        if not senders:
            raise ValueError("TwilioSmsChannel needs at least one sender number")
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        self._senders = tuple(senders)
        self._turn = itertools.count()
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {
            "Authorization": basic_auth(account_sid, auth_token),
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self._lookup = TwilioStatusLookup(
            messages_url=self._url.removesuffix(".json"),
            account_sid=account_sid,
            auth_token=auth_token,
            session=session,
            timeout=timeout,
            normalise=normalised_status,
        )

    async def fetch_status(self, provider_message_id: str) -> ProviderStatus:
        """`StatusLookup`: the message's status at Twilio. Raises MessageNotFound,
        TransientChannelError or PermanentChannelError."""
        return await self._lookup.fetch(provider_message_id)

    def _sender_for(self, message: OutgoingMessage) -> str:
        # crc32, not hash(): the same reference picks the same sender in every process.
        turn = zlib.crc32(message.reference.encode()) if message.reference else next(self._turn)
        return self._senders[turn % len(self._senders)]

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Raises TransientChannelError or PermanentChannelError, nothing else."""
        sender = self._sender_for(message)
        form = {"To": message.phone_e164, "From": sender, "Body": message.text}
        if message.callback_url:
            form["StatusCallback"] = message.callback_url
        try:
            async with self._session.post(
                self._url,
                data=urlencode(form).encode(),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = response.headers.get("Retry-After")
        except TimeoutError as exc:
            raise TransientChannelError(
                "Twilio did not answer in time",
                code="timeout",
                detail=self._detail(message, sender, error=exc),
            ) from None
        except aiohttp.ClientError as exc:
            raise TransientChannelError(
                "could not reach Twilio",
                code="connection_error",
                detail=self._detail(message, sender, error=exc),
            ) from None

        answer = json_object(raw)
        if 200 <= status < 300 and answer is not None:
            sid = answer.get("sid")
            provider_status = answer.get("status")
            if isinstance(sid, str) and sid:
                return SendResult(
                    provider_message_id=sid,
                    provider_status=provider_status if isinstance(provider_status, str) else "",
                )
        raise self._error(message, sender, status, raw, answer, retry_after)

    def _error(
        self,
        message: OutgoingMessage,
        sender: str,
        status: int,
        raw: bytes,
        answer: dict[str, object] | None,
        retry_after: str | None,
    ) -> ChannelError:
        """The error for any answer but a 2xx with a sid, by `_OUTCOME_BY_CODE`."""
        body = self._redact(raw.decode("utf-8", "replace"), message)[:DETAIL_BODY_CHARS]
        detail = self._detail(message, sender, status=status, body=body)
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
            reason += ": " + self._redact(text, message)

        outcome = _OUTCOME_BY_CODE.get(twilio_code) if twilio_code else None
        if status == 429 or outcome is _Outcome.TRANSIENT:
            return TransientChannelError(
                reason,
                code=str(twilio_code or status),
                retry_after=_retry_after_seconds(retry_after),
                **common,
            )
        if status >= 500:
            return TransientChannelError(reason, code="http_5xx", **common)
        if 400 <= status < 500 and twilio_code:
            return PermanentChannelError(
                reason,
                code=str(twilio_code),
                recipient_invalid=outcome is _Outcome.RECIPIENT_INVALID,
                **common,
            )
        return PermanentChannelError(
            reason + ", outside Twilio's known answers",
            code="unexpected",
            unexpected=True,
            **common,
        )

    def _detail(
        self,
        message: OutgoingMessage,
        sender: str,
        *,
        status: int | None = None,
        body: str = "",
        error: BaseException | None = None,
    ) -> dict[str, object]:
        callback = urlsplit(message.callback_url)
        response: dict[str, object] = {"status": status, "body": body}
        if error is not None:
            response["error"] = f"{type(error).__name__}: {error}"
        return {
            "request": {
                "url": self._url,
                "To": mask_phone(message.phone_e164),
                "From": sender,
                "Body": {"length": len(message.text)},
                # Without its query string, which may carry a token.
                "StatusCallback": f"{callback.scheme}://{callback.netloc}{callback.path}"
                if message.callback_url
                else "",
            },
            "response": response,
        }

    @staticmethod
    def _redact(text: str, message: OutgoingMessage) -> str:
        """`text` without the message's number or text, as Twilio may echo both."""
        phone = message.phone_e164
        masked = mask_phone(phone)
        redacted = text.replace(phone, masked)
        bare = phone.removeprefix("+")
        if len(bare) >= 6:
            redacted = redacted.replace(bare, masked.removeprefix("+"))
        if message.text:
            placeholder = f"<text: {len(message.text)} chars>"
            redacted = redacted.replace(message.text, placeholder)
            escaped = orjson.dumps(message.text).decode()[1:-1]
            redacted = redacted.replace(escaped, placeholder)
            redacted = redacted.replace(json.dumps(message.text)[1:-1], placeholder)
        return redacted


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
