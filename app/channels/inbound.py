"""What a provider hands over when a patient writes: one frozen shape for every channel.

The adapters' webhook parsers build it; the messages service stores it. No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from app.channels.base import ChannelName
from app.validation import storable_text

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass(frozen=True, slots=True)
class Media:
    """A picture, voice note or document, left with the provider: its type and id."""

    content_type: str
    provider_media_id: str


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    channel: ChannelName
    provider_message_id: str
    sender_e164: str
    text: str
    media: tuple[Media, ...] = ()
    # The provider's own moment, when it gives one; otherwise the moment we heard.
    received_at: datetime | None = None

    def __post_init__(self) -> None:
        # A patient may write anything, a null character too (which PostgreSQL cannot
        # store: every retry of the provider's webhook was a 500): kept, replaced.
        object.__setattr__(self, "provider_message_id", storable_text(self.provider_message_id))
        object.__setattr__(self, "text", storable_text(self.text))
        if self.media:
            media = tuple(
                Media(storable_text(m.content_type), storable_text(m.provider_media_id))
                for m in self.media
            )
            object.__setattr__(self, "media", media)


def sender_e164(raw: str) -> str:
    """A provider's `From` as E.164 (`whatsapp:+880...` and `880...` too).

    Raises ValueError for anything that is not a phone number.
    """
    number = raw.strip().removeprefix("whatsapp:").strip()
    if number.isdigit():
        number = "+" + number
    if not _E164.match(number):
        raise ValueError("the sender is not an E.164 phone number")
    return number
