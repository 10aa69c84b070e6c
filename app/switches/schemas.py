"""Wire shapes of switches."""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import BaseModel, Field

from app.models import Switch
from app.validation import InputModel


class SwitchIn(InputModel):
    paused: bool = Field(description="true pauses sending in the scope; false resumes it")
    reason: str = Field(min_length=1, max_length=1000, examples=["Twilio incident in India"])
    by: str = Field(min_length=1, max_length=200, examples=["ops@clinic.example"])


class SwitchOut(BaseModel):
    scope: str = Field(examples=["country=IN,channel=whatsapp"])
    country: str | None
    channel: str | None
    purpose: str | None
    paused: bool
    reason: str
    by: str = Field(description="Who changed it last")
    changed_at: datetime

    @classmethod
    def of(cls, switch: Switch) -> Self:
        return cls(
            scope=switch.scope,
            country=switch.country,
            channel=switch.channel,
            purpose=switch.purpose,
            paused=switch.paused,
            reason=switch.reason,
            by=switch.changed_by,
            changed_at=switch.changed_at,
        )


class SwitchPutOut(SwitchOut):
    released: int = Field(
        description="Notifications the pause held that are due again now (resume only)"
    )


class SwitchListOut(BaseModel):
    data: list[SwitchOut]
