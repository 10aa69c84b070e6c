"""Wire shapes of webhook endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import BaseModel, Field, model_validator

from app.models import WebhookEndpoint
from app.validation import BoundedDatetime, InputModel, SingleLine
from app.webhooks.events import EventType

# The enum's values, named in the OpenAPI document.
EventName = EventType
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"


class WebhookIn(InputModel):
    url: SingleLine = Field(
        min_length=1,
        max_length=2000,
        description="https in production; never a private, loopback or link-local address "
        "unless WEBHOOK_ALLOW_PRIVATE",
    )
    events: list[EventName] = Field(min_length=1, max_length=20)
    active: bool = True


class WebhookOut(BaseModel):
    name: str
    url: str
    events: list[str]
    active: bool
    secret: str | None = Field(
        description="`whsec_...`, to verify signatures: in the answer that creates the "
        "endpoint only"
    )
    failing_since: datetime | None
    disabled_at: datetime | None

    @classmethod
    def from_model(cls, endpoint: WebhookEndpoint, *, show_secret: bool) -> Self:
        return cls(
            name=endpoint.name,
            url=endpoint.url,
            events=endpoint.events,
            active=endpoint.active,
            secret=endpoint.secret if show_secret else None,
            failing_since=endpoint.failing_since,
            disabled_at=endpoint.disabled_at,
        )


class ReplayIn(InputModel):
    since: BoundedDatetime
    until: BoundedDatetime
    events: list[EventName] | None = Field(default=None, description="Default: every type")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.until <= self.since:
            raise ValueError("until must be after since")
        return self


class ReplayOut(BaseModel):
    queued: int = Field(description="Deliveries owed to the endpoint again")
