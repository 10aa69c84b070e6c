"""Wire shapes of broadcasts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.channels.base import ChannelName
from app.events.schemas import TEMPLATE_PATTERN
from app.groups.schemas import GROUP_NAME_PATTERN
from app.models import Broadcast
from app.notifications.schemas import PURPOSE_PATTERN
from app.templates.placeholders import FREE_TEXT_TEMPLATE, FREE_TEXT_VARIABLE
from app.validation import BoundedDatetime, InputModel

ParameterValue = Annotated[str, StringConstraints(max_length=500)]


class BroadcastIn(InputModel):
    group: str = Field(pattern=GROUP_NAME_PATTERN)
    template: str | None = Field(
        default=None,
        pattern=TEMPLATE_PATTERN,
        description="The template every member's message is rendered from, in their "
        "language; this or `text`",
    )
    text: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="Instead of a template: one text, sent to every member as written "
        "(as a staff member's message is, in the template `conversation.staff_message`). "
        "WhatsApp takes a text only from a patient who wrote on WhatsApp in the last 24 "
        "hours; for the others the next channel of the chain carries it",
        examples=["The clinic is closed on Friday 12 December; come on Saturday."],
    )
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        max_length=50,
        description="Template variable -> text; `@name` is the recipient's name, "
        "`@facility_name` their facility's, `@<attribute>` their attribute of that name "
        "(empty when they have none). With a template only",
        examples=[{"camp_day": "Friday", "area": "@area"}],
    )
    purpose: str = Field(pattern=PURPOSE_PATTERN)
    send_at: BoundedDatetime | None = Field(
        default=None,
        description="Not before then (default now); each recipient's message is moved into "
        "the messaging window of their time zone",
    )
    channel_chain: list[ChannelName] | None = Field(
        default=None,
        min_length=1,
        max_length=5,
        description="The channels to try in order; default the country's configured chain",
    )

    @model_validator(mode="after")
    def _names(self) -> Self:
        if (self.template is None) == (self.text is None):
            raise ValueError("give a template or a text, one of the two")
        if self.text is not None and self.parameters:
            raise ValueError("parameters fill a template's variables; a text goes as written")
        for name in self.parameters:
            if not name.isidentifier() or len(name) > 64:
                raise ValueError(f"parameter name '{name[:64]}' is not an identifier")
        return self

    @property
    def template_key(self) -> str:
        """The template the members' messages are rendered from (a text's: the template
        of texts written by hand)."""
        return FREE_TEXT_TEMPLATE if self.template is None else self.template

    @property
    def variables(self) -> dict[str, str]:
        """The template's parameters (a text: the text, its one variable)."""
        return {FREE_TEXT_VARIABLE: self.text} if self.text is not None else self.parameters


class BroadcastProgress(BaseModel):
    members: int = Field(description="Members the fan-out has reached so far")
    scheduled: int = Field(description="Not sent yet (scheduled, muted or being sent)")
    sent: int
    delivered: int
    read: int
    failed: int
    denied: int
    cleared: int
    expired: int


class BroadcastOut(BaseModel):
    id: uuid.UUID
    group: str
    template: str
    text: str | None = Field(description="The broadcast's text, when it was sent as one")
    parameters: dict[str, str]
    purpose: str
    send_at: datetime
    channel_chain: list[str] | None
    state: str = Field(description="`fanning_out`, `fanned_out` or `cancelled`")
    progress: BroadcastProgress
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, broadcast: Broadcast, members: int, counts: dict[str, int]) -> Self:
        def count(*states: str) -> int:
            return sum(counts.get(state, 0) for state in states)

        # A text travels as the one parameter of the free-text template.
        is_text = broadcast.template == FREE_TEXT_TEMPLATE
        return cls(
            id=broadcast.id,
            group=broadcast.group_name,
            template=broadcast.template,
            text=broadcast.parameters.get(FREE_TEXT_VARIABLE) if is_text else None,
            parameters={} if is_text else broadcast.parameters,
            purpose=broadcast.purpose,
            send_at=broadcast.send_at,
            channel_chain=broadcast.channel_chain,
            state=broadcast.state,
            progress=BroadcastProgress(
                members=members,
                scheduled=count("scheduled", "muted", "sending"),
                sent=count("sent"),
                delivered=count("delivered"),
                read=count("read"),
                failed=count("failed"),
                denied=count("denied"),
                cleared=count("cleared"),
                expired=count("expired"),
            ),
            created_at=broadcast.created_at,
            updated_at=broadcast.updated_at,
        )
