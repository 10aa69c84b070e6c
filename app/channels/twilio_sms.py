"""Twilio SMS: the fallback channel, and the common path (Twilio's Messages API, shared
with WhatsApp through Twilio, is in twilio_messages.py)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from app.channels.base import ChannelName, OutgoingMessage, SendResult
from app.channels.twilio_messages import TwilioMessages

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

    @property
    def normalised(self) -> str:
        return normalised_status(self.message_status)


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
        self._messages = TwilioMessages(
            base_url=base_url,
            account_sid=account_sid,
            auth_token=auth_token,
            session=session,
            timeout=timeout,
        )
        self.base_url = self._messages.base_url
        self._senders = tuple(senders)
        self._turn = itertools.count()

    def _sender_for(self, message: OutgoingMessage) -> str:
        # crc32, not hash(): the same reference picks the same sender in every process.
        turn = zlib.crc32(message.reference.encode()) if message.reference else next(self._turn)
        return self._senders[turn % len(self._senders)]

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Raises TransientChannelError or PermanentChannelError, nothing else."""
        form = {"To": message.phone_e164, "From": self._sender_for(message), "Body": message.text}
        if message.callback_url:
            form["StatusCallback"] = message.callback_url
        return await self._messages.create(form, message)
