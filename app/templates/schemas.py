"""Wire shapes of templates, and the locale tag that patients share with them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    model_validator,
)

from app.models import Template
from app.templates.placeholders import variables_of
from app.validation import InputModel

_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
TEMPLATE_KEY_PATTERN = r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*$"


def normalise_locale(value: str) -> str:
    """A BCP-47-ish tag in its canonical case: `BN_bd` -> `bn-BD`, `zh-hant-tw` -> `zh-Hant-TW`.

    Patients and templates are matched by exact tag, so both sides go through this.
    Raises ValueError for anything that is not shaped like a language tag.
    """
    if not _LOCALE.fullmatch(value):
        raise ValueError("not a language tag like 'en' or 'bn-BD'")
    language, *subtags = value.replace("_", "-").split("-")
    canonical = [language.lower()]
    for subtag in subtags:
        if len(subtag) == 4 and subtag.isalpha():
            canonical.append(subtag.title())  # script
        elif (len(subtag) == 2 and subtag.isalpha()) or (len(subtag) == 3 and subtag.isdigit()):
            canonical.append(subtag.upper())  # region
        else:
            canonical.append(subtag.lower())
    return "-".join(canonical)


Locale = Annotated[
    str,
    StringConstraints(min_length=2, max_length=20),
    AfterValidator(normalise_locale),
    Field(examples=["bn-BD", "en"], description="A BCP 47 language tag"),
]


def _plain_variables(text: str) -> str:
    variables_of(text)  # raises ValueError naming the bad placeholder
    return text


class WhatsAppTemplate(InputModel):
    """The pre-approved WhatsApp template a text is sent as: WhatsApp allows nothing else
    outside the 24-hour customer-service window."""

    name: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^[a-z0-9_]+$",
        description="The template's name as approved in WhatsApp Manager (Cloud API)",
        examples=["appointment_reminder"],
    )
    language: str = Field(
        min_length=2,
        max_length=10,
        pattern=r"^[a-z]{2,3}(?:_[A-Za-z]{2,4})?$",
        description="The approved translation's language code, e.g. `en_US`, `hi`, `bn`",
        examples=["en_US"],
    )
    parameters: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = (
        Field(
            default_factory=list,
            max_length=100,
            description="The variables filling the approved body's `{{1}}`, `{{2}}`, ... in "
            "that order; each must be one of this template's variables",
            examples=[["patient_name", "facility_name", "appointment_date"]],
        )
    )
    content_sid: str | None = Field(
        default=None,
        pattern=r"^HX[0-9a-fA-F]{32}$",
        description="The same template's Content SID at Twilio, for WHATSAPP_PROVIDER=twilio",
        examples=["HXb5b62575e6e4ff6129ad7c8efe1f983e"],
    )


class TemplateIn(InputModel):
    title: Annotated[str, AfterValidator(_plain_variables)] = Field(
        min_length=1,
        max_length=200,
        description="The heading some channels show above the text; may use `{variables}`.",
        examples=["Appointment Reminder"],
    )
    body: Annotated[str, AfterValidator(_plain_variables)] = Field(
        min_length=1,
        max_length=5000,
        description="The message text; variables are plain `{name}` placeholders, "
        "literal braces are doubled (`{{`, `}}`).",
        examples=["Dear {patient_name}, your visit at {facility_name} is on {appointment_date}."],
    )
    whatsapp: WhatsAppTemplate | None = Field(
        default=None,
        description="How this text goes out on WhatsApp; without it, reminders of this "
        "template skip the WhatsApp channel (the attempt says why) and go to the next one",
    )

    @model_validator(mode="after")
    def _parameters_are_variables(self) -> Self:
        if self.whatsapp is not None:
            known = variables_of(self.title) | variables_of(self.body)
            unknown = [name for name in self.whatsapp.parameters if name not in known]
            if unknown:
                raise ValueError(
                    f"whatsapp.parameters names variables the template does not use: {unknown}"
                )
        return self


class TemplateOut(BaseModel):
    key: str
    locale: str
    title: str
    body: str
    variables: list[str] = Field(description="The variables title and body use, sorted")
    whatsapp: WhatsAppTemplate | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, template: Template) -> Self:
        return cls(
            key=template.key,
            locale=template.locale,
            title=template.title,
            body=template.body,
            variables=sorted(variables_of(template.title) | variables_of(template.body)),
            whatsapp=WhatsAppTemplate.model_validate(template.whatsapp)
            if template.whatsapp
            else None,
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


class TemplateList(BaseModel):
    items: list[TemplateOut]
    next_cursor: str | None = Field(
        default=None, description="Always null: every template fits on one page"
    )
