"""Wire shapes of staff users."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.email_address import EmailAddress
from app.models import StaffMember
from app.templates.schemas import Locale
from app.validation import InputModel, SingleLine

STAFF_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@~+=-]*$"

StaffId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=STAFF_ID_PATTERN),
]


class StaffIn(InputModel):
    """A staff user as the clinic system holds them. Staff are reached by email only."""

    model_config = ConfigDict(str_strip_whitespace=True)

    name: SingleLine = Field(min_length=1, max_length=200, examples=["Dr. Nasrin Akter"])
    email: EmailAddress
    locale: Locale


class StaffOut(BaseModel):
    id: str
    name: str
    email: str = Field(description="Normalised: the domain in lower case")
    locale: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, staff: StaffMember) -> Self:
        return cls(
            id=staff.id,
            name=staff.name,
            email=staff.email,
            locale=staff.locale,
            created_at=staff.created_at,
            updated_at=staff.updated_at,
        )
