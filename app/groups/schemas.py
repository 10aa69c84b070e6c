"""Wire shapes of groups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.models import Group
from app.staff.schemas import StaffId
from app.validation import InputModel

GROUP_NAME_PATTERN = r"^[a-z][a-z0-9_.\-]{0,99}$"
# Members added, removed or listed in one request.
MAX_MEMBERS_PER_REQUEST = 10_000

PatientId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class AgeBand(InputModel):
    min: int | None = Field(default=None, ge=0, le=150, description="Years, included")
    max: int | None = Field(default=None, ge=0, le=150, description="Years, included")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


class GroupFilter(InputModel):
    """Patients matching every field given (any of each list)."""

    facility_id: list[Short] | None = Field(default=None, min_length=1, max_length=100)
    country: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]] | None = Field(
        default=None, min_length=1, max_length=50
    )
    locale: list[Short] | None = Field(default=None, min_length=1, max_length=50)
    tags: list[Short] | None = Field(
        default=None, min_length=1, max_length=20, description="Patients with all of these"
    )
    attributes: dict[str, str | int | float | bool] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Patients whose attributes hold these values",
        examples=[{"area": "Mirpur"}],
    )
    age: AgeBand | None = Field(
        default=None, description="Age in whole years by the `birth_date` attribute"
    )

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("a filter needs at least one field")
        return self


class PatientGroupIn(InputModel):
    """A static list of patients (`members`) and/or staff (`staff`), or a `filter` over
    patients, not both kinds."""

    members: list[PatientId] | None = Field(
        default=None,
        max_length=MAX_MEMBERS_PER_REQUEST,
        description="Patient ids; more are added with POST .../members",
    )
    staff: list[StaffId] | None = Field(
        default=None,
        max_length=MAX_MEMBERS_PER_REQUEST,
        description="Staff ids (`PUT /v1/staff/{id}`): broadcasts reach them by email",
    )
    filter: GroupFilter | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        static = self.members is not None or self.staff is not None
        if static == (self.filter is not None):
            raise ValueError("give members (and/or staff) or filter, one of them")
        if len(self.members or ()) + len(self.staff or ()) > MAX_MEMBERS_PER_REQUEST:
            raise ValueError(
                f"at most {MAX_MEMBERS_PER_REQUEST:,} members and staff together a request"
            )
        return self


class MembersIn(InputModel):
    """A batch of patients and/or staff, at most MAX_MEMBERS_PER_REQUEST together."""

    patient_ids: list[PatientId] = Field(default_factory=list, max_length=MAX_MEMBERS_PER_REQUEST)
    staff_ids: list[StaffId] = Field(default_factory=list, max_length=MAX_MEMBERS_PER_REQUEST)

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.patient_ids and not self.staff_ids:
            raise ValueError("give patient_ids, staff_ids or both")
        if len(self.patient_ids) + len(self.staff_ids) > MAX_MEMBERS_PER_REQUEST:
            raise ValueError(
                f"at most {MAX_MEMBERS_PER_REQUEST:,} patient and staff ids together a request"
            )
        return self


class PatientGroupOut(BaseModel):
    name: str
    kind: Literal["static", "filter"]
    filter: dict[str, Any] | None
    members: int = Field(description="Patients in the group now")
    staff: int = Field(description="Staff members in the group now (a static group's)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, group: Group, members: int, staff: int = 0) -> Self:
        return cls(
            name=group.name,
            kind="static" if group.filter is None else "filter",
            filter=group.filter,
            members=members,
            staff=staff,
            created_at=group.created_at,
            updated_at=group.updated_at,
        )
