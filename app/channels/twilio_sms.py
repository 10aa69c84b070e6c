"""Twilio SMS: the fallback channel, and the common path (Twilio's Messages API, shared
with WhatsApp through Twilio, is in twilio_messages.py)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

import aiohttp

from app.channels.base import ChannelName, OutgoingMessage, ProviderStatus, SendResult
from app.channels.inbound import IncomingMessage, Media, sender_e164
from app.channels.twilio_messages import TwilioMessages, normalised_status

# Status callbacks are parsed here; `normalised_status` is the Twilio vocabulary's, shared
# with WhatsApp through Twilio and with look-ups.
__all__ = ["TwilioSmsChannel", "TwilioStatus", "normalised_status", "parse_status_callback"]


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

    async def fetch_status(self, provider_message_id: str) -> ProviderStatus:
        """`StatusLookup`: the message's status at Twilio (see `TwilioMessages`)."""
        return await self._messages.fetch_status(provider_message_id)


def parse_inbound(params: Mapping[str, str]) -> IncomingMessage:
    """Twilio's inbound-message webhook (SMS, or WhatsApp when `From` says `whatsapp:`).

    Raises ValueError without MessageSid or with a `From` that is not a phone number.
    Media are kept by reference: their content type and Twilio's media sid (`ME...`).
    """
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    if not sid:
        raise ValueError("inbound message without MessageSid")
    raw_sender = params.get("From", "")
    channel = ChannelName.WHATSAPP if raw_sender.startswith("whatsapp:") else ChannelName.SMS
    try:
        count = int(params.get("NumMedia") or 0)
    except ValueError as exc:
        raise ValueError("NumMedia is not a number") from exc
    media = tuple(
        Media(
            content_type=params.get(f"MediaContentType{i}", "")[:100],
            provider_media_id=params.get(f"MediaUrl{i}", "").rstrip("/").rsplit("/", 1)[-1][:200],
        )
        for i in range(min(count, 10))
        if params.get(f"MediaUrl{i}")
    )
    return IncomingMessage(
        channel=channel,
        provider_message_id=sid[:100],
        sender_e164=sender_e164(raw_sender),
        text=params.get("Body", ""),
        media=media,
    )


def twiml_reply(text: str | None) -> str:
    """The TwiML answer to an inbound message: empty, or one message back."""
    if not text:
        return '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
        + xml_escape(text)
        + "</Message></Response>"
    )
