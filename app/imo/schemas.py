"""Wire shapes of Imo invitation rounds and authorisations."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.validation import InputModel


class InvitationRunIn(InputModel):
    limit: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Invite at most this many patients in this round (default: all).",
    )


class InvitationCounts(BaseModel):
    invited: int = Field(description="Imo sent the invitation (or had sent it before)")
    subscribed: int = Field(description="Already subscribed")
    not_subscribed: int
    no_imo_account: int
    unexpected: int = Field(description="Answers outside Imo's known vocabulary; next round")
    transient: int = Field(description="Failed after retries (time-outs, 5xx); next round")
    denied: int = Field(description="Not in ALLOWED_RECIPIENTS outside production")
    unconfirmed: int = Field(
        description="A worker died with the invitation in flight: not sent again in this "
        "round (at most one invitation per round); next round"
    )


class InvitationRunOut(BaseModel):
    # Read from the service's RoundProgress.
    model_config = ConfigDict(from_attributes=True)

    id: int
    state: Literal["running", "paused", "completed"] = Field(
        description="`paused`: what is left waits for the messaging window to open (`paused_until`)"
    )
    trigger: str = Field(examples=["api"], description="`schedule`, `api`, `cli` or `bench`")
    limit: int | None
    candidates: int | None = Field(
        description="Patients to invite, counted when the round started (null until then)"
    )
    reached: int = Field(description="Patients with an answer so far")
    progress: float | None = Field(description="reached / candidates, 0 to 1")
    counts: InvitationCounts
    started_at: datetime
    updated_at: datetime
    paused_until: datetime | None
    finished_at: datetime | None


class AuthorizationStatusCounts(BaseModel):
    none: int = Field(description="No authorisation yet (never invited)")
    invited: int
    subscribed: int
    not_subscribed: int
    no_imo_account: int


class AuthorizationSummaryOut(BaseModel):
    patients: int
    by_status: AuthorizationStatusCounts
