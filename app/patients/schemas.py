"""Wire shapes of patients."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    StringConstraints,
    field_validator,
    model_validator,
)

from app import phone
from app.email_address import EmailAddress
from app.errors import ErrorInfo
from app.models import ImoAuthorization, Patient
from app.templates.schemas import Locale
from app.validation import InputModel, SingleLine, check_keys

PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@~+=-]*$"
MAX_PHONE_NUMBERS = 10
MAX_BATCH_SIZE = 1000

PatientId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=PATIENT_ID_PATTERN),
    Field(
        description="The clinic system's id: 1-64 letters, digits and `._:@~+=-`, "
        "starting with a letter or digit",
        examples=["p-1"],
    ),
]
PhoneType = Literal["mobile", "landline"]
Consent = Literal["granted", "denied"]


def _country(value: str) -> str:
    value = value.upper()
    if not phone.is_known_country(value):
        raise ValueError(f"'{value}' is not an ISO 3166 alpha-2 country with phone numbers")
    return value


def _time_zone(value: str) -> str:
    if not phone.is_valid_time_zone(value):
        raise ValueError(f"'{value}' is not an IANA time zone like 'Asia/Dhaka'")
    return value


class PhoneNumberIn(InputModel):
    number: str = Field(
        min_length=1,
        max_length=40,
        description="National (read with `country`) or E.164",
        examples=["01711000001", "+8801711000001"],
    )
    type: PhoneType = Field(description="Only mobiles are messaged")


class Facility(InputModel):
    id: SingleLine = Field(min_length=1, max_length=64, examples=["f-12"])
    name: SingleLine = Field(min_length=1, max_length=200, examples=["Dhaka Medical"])


class PatientIn(InputModel):
    """A patient's contact record, as the clinic system holds it."""

    model_config = ConfigDict(str_strip_whitespace=True)

    full_name: SingleLine = Field(min_length=1, max_length=200, examples=["Rahim Uddin"])
    phone_numbers: list[PhoneNumberIn] = Field(
        max_length=MAX_PHONE_NUMBERS,
        description="The first mobile is the one messages go to",
    )
    email: EmailAddress | None = Field(
        default=None,
        description="Optional. Conversation messages prefer it when set "
        "(`EMAIL_PREFERRED_PURPOSES`); reminders use it where their channel chain has "
        "`email`. Stored with its domain in lower case.",
        examples=["rahim.uddin@example.org"],
    )
    country: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]{2}$"), AfterValidator(_country)
    ] = Field(description="ISO 3166-1 alpha-2", examples=["BD"])
    locale: Locale
    time_zone: (
        Annotated[str, StringConstraints(max_length=64), AfterValidator(_time_zone)] | None
    ) = Field(
        default=None,
        description="IANA time zone; defaults from `country` (or the numbers' area)",
        examples=["Asia/Dhaka"],
    )
    facility: Facility | None = None
    reminder_consent: Consent = Field(description="`denied`: never messaged")
    attributes: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        max_length=50,
        description="The clinic system's own fields, for group filters and broadcast "
        "parameters (`@area`); a `birth_date` (YYYY-MM-DD) gives group filters the age",
        examples=[{"area": "Mirpur", "birth_date": "1990-04-01"}],
    )
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=50, examples=[["anc", "diabetes"]]
    )


class PatientBatchItemIn(PatientIn):
    id: PatientId


class PatientBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Items are validated one by one in the service, so that one bad item does not
    # sink the others; the annotation only documents their shape in the OpenAPI.
    patients: list[Annotated[PatientBatchItemIn, SkipValidation]] = Field(
        min_length=1,
        max_length=MAX_BATCH_SIZE,
        description=f"1 to {MAX_BATCH_SIZE:,} patients, answered in the same order. "
        "An id given twice: the last valid item is stored, earlier ones answer "
        "`duplicate_id`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _storable_keys(cls, data: Any) -> Any:
        check_keys(data, depth=1)  # the items' own keys: item by item, in the service
        return data

    @field_validator("patients", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_BATCH_SIZE:
            raise ValueError(
                f"a batch holds 1 to {MAX_BATCH_SIZE:,} patients, not {len(value):,}: "
                "split it into several requests"
            )
        return value


class PhoneNumberOut(BaseModel):
    number: str = Field(description="E.164", examples=["+8801711000001"])
    type: PhoneType


class FacilityOut(BaseModel):
    id: str
    name: str


class ImoAuthorizationOut(BaseModel):
    status: str = Field(examples=["subscribed"])
    last_invited_at: datetime | None


class PatientOut(BaseModel):
    id: str
    full_name: str
    phone_numbers: list[PhoneNumberOut]
    mobile_e164: str | None = Field(description="The number messages go to")
    email: str | None = Field(description="Normalised: the domain in lower case")
    country: str
    locale: str
    time_zone: str
    facility: FacilityOut | None
    reminder_consent: Consent
    opted_out_channels: list[str] = Field(
        description="Channels the patient opted out of themselves (STOP, or a provider's "
        "opt-out); `*`: every channel. Only the patient's START lifts them."
    )
    attributes: dict[str, Any]
    tags: list[str]
    imo_authorization: ImoAuthorizationOut | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, patient: Patient, authorization: ImoAuthorization | None) -> Self:
        facility = None
        if patient.facility_id is not None:
            facility = FacilityOut(id=patient.facility_id, name=patient.facility_name or "")
        return cls(
            id=patient.id,
            full_name=patient.full_name,
            phone_numbers=[PhoneNumberOut.model_validate(n) for n in patient.phone_numbers],
            mobile_e164=patient.mobile_e164,
            email=patient.email,
            country=patient.country,
            locale=patient.locale,
            time_zone=patient.time_zone,
            facility=facility,
            reminder_consent=cast(Consent, patient.reminder_consent),
            opted_out_channels=list(patient.opted_out_channels or ()),
            attributes=patient.attributes,
            tags=list(patient.tags),
            imo_authorization=None
            if authorization is None
            else ImoAuthorizationOut(
                status=authorization.status, last_invited_at=authorization.last_invited_at
            ),
            created_at=patient.created_at,
            updated_at=patient.updated_at,
        )


class PatientBatchResult(BaseModel):
    index: int = Field(description="The item's position in the request")
    id: str | None = Field(description="The item's id, when it had a readable one")
    status: Literal["created", "updated", "error"]
    patient: PatientOut | None = None
    error: ErrorInfo | None = None


class PatientBatchOut(BaseModel):
    results: list[PatientBatchResult]


class PatientPage(BaseModel):
    items: list[PatientOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )
