from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.validation import InputModel


class GatewayIn(InputModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^:\s]+$",
        description=("The phone's user name in cht-gateway's settings (no colon, no spaces)"),
    )
    country: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{2}$", description="The country whose queue it serves"
    )
    number: str | None = Field(
        default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="The phone's own number"
    )


class GatewayOut(BaseModel):
    id: int
    name: str
    country: str | None
    number: str | None
    created_at: datetime
    last_polled_at: datetime | None
    queue_depth: int = Field(description="Messages offered to it and not yet acknowledged")
    counts: dict[str, int] = Field(description="Its messages by state on the phone")


class GatewayCreated(GatewayOut):
    secret: str = Field(description="Its password in cht-gateway's settings: shown only once")


class GatewayList(BaseModel):
    data: list[GatewayOut]
