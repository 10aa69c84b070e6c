"""What every provider adapter speaks: frozen dataclasses in and out, two errors.

Adapters know providers and nothing else: no database, no policy. Every failure of a
provider is mapped into `TransientChannelError` (time-out, 429, 5xx: retry or fall
back) or `PermanentChannelError` (no account, invalid number: do not retry); vendor
exceptions never leak past an adapter.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import orjson

from app.logs import mask_phone

# Re-exported: the channels' names are shared vocabulary, one floor down (settings use them).
from app.states import ChannelName as ChannelName


@dataclass(frozen=True, slots=True)
class WhatsAppTemplateMessage:
    """A pre-approved WhatsApp template, its parameters already filled in, in order."""

    name: str
    language: str
    parameters: tuple[str, ...] = ()
    # The same template at Twilio (Content API), when the deployment has one.
    content_sid: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to one phone or email address, already rendered and allowed by policy.

    The email channel sends to `email` (`phone_e164` is then empty when the recipient
    has no mobile), with `title` as the subject.
    """

    phone_e164: str
    text: str
    locale: str
    title: str
    # Where the provider reports on this message (read receipts, statuses).
    callback_url: str
    recipient_name: str = ""
    # A button under the message (Imo's `action` and `url`), when the channel has one.
    action: str = ""
    action_url: str = ""
    # Used by adapters that rotate senders, so a message keeps its sender on retry.
    reference: str = ""
    # An id the provider echoes in its statuses (WhatsApp's biz_opaque_callback_data).
    status_reference: str = ""
    # WhatsApp: the approved template this text is sent as, when its template has one.
    whatsapp_template: WhatsAppTemplateMessage | None = None
    # WhatsApp: inside the 24-hour customer-service window (the patient wrote to us on
    # WhatsApp in the last 24 h) `text` may go out as it is.
    free_text_allowed: bool = False
    # Email: the recipient's address (normalised), and the conversation a staff message
    # belongs to, if any (for its Reply-To).
    email: str = ""
    conversation_id: str = ""


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str
    provider_status: str


def json_object(raw: bytes) -> dict[str, object] | None:
    """A provider's answer as a JSON object, or None for anything else."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def redact(text: str, message: OutgoingMessage) -> str:
    """`text` (a provider's answer) without the message's number, text or template
    parameters, as providers may echo them."""
    phone = message.phone_e164
    masked = mask_phone(phone)
    redacted = text.replace(phone, masked)
    bare = phone.removeprefix("+")
    if len(bare) >= 6:
        redacted = redacted.replace(bare, masked.removeprefix("+"))
    template = message.whatsapp_template
    secrets = [message.text, *(template.parameters if template else ())]
    # Longest first, and not the shortest (a one-digit parameter would blank every digit).
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        placeholder = f"<text: {len(secret)} chars>"
        redacted = redacted.replace(secret, placeholder)
        redacted = redacted.replace(orjson.dumps(secret).decode()[1:-1], placeholder)
        redacted = redacted.replace(json.dumps(secret)[1:-1], placeholder)
    return redacted


class ChannelError(Exception):
    """A provider refused or failed a request. `detail` carries the evidence."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        provider_status: str = "",
        detail: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.provider_status = provider_status
        self.detail: dict[str, object] = detail or {}


class TransientChannelError(ChannelError):
    """Time-out, connection error, 429 or 5xx: the same request may succeed later.

    `retry_after` is the provider's own hint in seconds, when it gave one. `account_limited`
    marks a limit on the whole account that a provider reports other than by a 429
    (WhatsApp's 130429 and 131056).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        account_limited: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.account_limited = account_limited

    @property
    def throttled(self) -> bool:
        """The provider answered 429: the whole account must slow down, not one message."""
        return self.account_limited or self.provider_status == "429"


class PermanentChannelError(ChannelError):
    """The provider will never take this message: do not retry on this channel.

    `recipient_invalid` marks a number that no channel can reach (Twilio 21211).
    `unexpected` marks an answer outside the provider's known vocabulary, which is
    reported to Sentry with the request and response. `maybe_sent` marks a success
    that could not be read (a 2xx without a message id): the provider may have taken
    the message, so it is neither resent nor sent on another channel. `opted_out` marks
    a recipient who told the provider to stop (Twilio 21610): not on this channel again.
    `no_account` marks a number without an account on this channel (WhatsApp 131026):
    the next channel is tried, and this one is not tried again for a while.
    `template_rejected` names a WhatsApp template the provider does not have or cannot
    fill (132000, 132001): no message of that template can go out until an operator
    fixes it, so the notification
    fails with the reason rather than hiding the fault behind a fallback.
    """

    def __init__(
        self,
        message: str,
        *,
        recipient_invalid: bool = False,
        unexpected: bool = False,
        maybe_sent: bool = False,
        opted_out: bool = False,
        no_account: bool = False,
        template_rejected: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.recipient_invalid = recipient_invalid
        self.unexpected = unexpected
        self.maybe_sent = maybe_sent
        self.opted_out = opted_out
        self.no_account = no_account
        self.template_rejected = template_rejected


class Channel(Protocol):
    name: ChannelName
    base_url: str

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one message. Raises TransientChannelError or PermanentChannelError."""
        ...


class MessageNotFound(PermanentChannelError):
    """A status look-up named a message the provider does not know."""


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A message's status as the provider reports it when asked.

    `status` is normalised like a callback's: sending, sent, delivered, read, failed, or
    `unknown` for a word outside the provider's known vocabulary.
    """

    provider_message_id: str
    status: str
    provider_status: str
    error_code: str | None = None
    error_message: str | None = None


@runtime_checkable
class StatusLookup(Protocol):
    """What a channel can do besides sending when its provider answers status look-ups
    (Twilio's Messages API, for SMS and for WhatsApp through Twilio): the reconciler
    asks it about messages whose final callback never came. Imo and the WhatsApp Cloud
    API have no such look-up, and their channels do not implement it."""

    async def fetch_status(self, provider_message_id: str) -> ProviderStatus:
        """Raises MessageNotFound, TransientChannelError or PermanentChannelError."""
        ...


@dataclass(frozen=True, slots=True)
class Invitation:
    """An Imo invitation to subscribe, already rendered in the patient's language."""

    phone_e164: str
    text: str
    title: str
    action: str
    recipient_name: str
    # Identifies the patient: Imo's acceptance callback does not name them.
    callback_url: str


@dataclass(frozen=True, slots=True)
class InvitationResult:
    """The answer to an Imo invitation: `invited`, `subscribed` or `no_imo_account`.

    `not_subscribed` too, when Imo says so of an invitation.
    """

    status: str
    provider_status: str = ""
    detail: dict[str, object] = field(default_factory=dict)


def basic_auth(login: str, password: str) -> str:
    """An HTTP Basic `Authorization` header's value. By hand: aiohttp 3.14 deprecates
    BasicAuth, and its replacement (encode_basic_auth) is not in 3.10."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
