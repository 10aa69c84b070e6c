"""Broadcasts: one message to every member of a group, fanned out by the worker.

Starting one checks it and stores it (`fanning_out`, with the group's filter as it is
then); the worker's job then schedules the members chunk by chunk, each chunk one
INSERT ... SELECT committed with the cursor (the last patient id done), so a worker
killed mid fan-out leaves the cursor at the last whole chunk and whoever resumes goes on
from there: nobody twice (unique (broadcast_id, patient_id) as well), nobody skipped.
A static group's staff members follow its patients the same way (`staff_cursor`,
unique (broadcast_id, staff_id)); the dispatcher reaches them by email.
The notifications are ordinary ones: the dispatcher applies consent, window, switches
and rate limits to them as to any other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.broadcasts import repository as broadcast_repository
from app.broadcasts.repository import ChunkStatement, FanOutPlan, LocaleText
from app.broadcasts.schemas import BroadcastIn
from app.config import Settings
from app.errors import InvalidInput, NotFound, field_error
from app.groups import service as group_service
from app.groups.repository import sample_members
from app.models import Broadcast, Patient, Template
from app.notifications.service import request_hash
from app.observability import BROADCAST_NOTIFICATIONS
from app.states import EVENT_SOURCES, EVENT_TARGET, NotificationEvent
from app.templates import repository as template_repository
from app.templates.placeholders import variables_of
from app.templates.service import FALLBACK_LOCALE, RenderedTemplate, locale_candidates, render_text

log = logging.getLogger(__name__)

FAN_OUT_JOB = "fan_out_broadcast"
# What `@<name>` fills from the patient's own columns; any other name is an attribute.
PATIENT_FIELDS = {"name": "full_name", "facility_name": "facility_name"}
STANDARD = {"patient_name": "@name", "facility_name": "@facility_name"}


def fan_out_job_id(broadcast_id: uuid.UUID, attempt: str = "start") -> str:
    return f"broadcast:{broadcast_id}:{attempt}"


async def start(
    session: AsyncSession,
    request: BroadcastIn,
    *,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Broadcast, bool]:
    """Check and store a broadcast; returns it and whether it was created now (the
    caller then enqueues its fan-out). Raises NotFound for an unknown group, InvalidInput
    for an unknown template, one without an `en` text, or a variable no parameter fills.
    A repeated key returns the first broadcast; with another body, InvalidInput. Flushes."""
    digest = request_hash(request)
    if idempotency_key is not None:
        existing = await _replay(session, idempotency_key, digest)
        if existing is not None:
            return existing, False
    group = await group_service.get_group(session, request.group)
    templates = await template_repository.with_keys(session, [request.template])
    _check_template(request, templates)
    broadcast = Broadcast(
        id=uuid.uuid4(),
        group_name=group.name,
        filter=group.filter,
        template=request.template,
        parameters=request.parameters,
        purpose=request.purpose,
        send_at=request.send_at or now or datetime.now(UTC),
        channel_chain=None if request.channel_chain is None else list(request.channel_chain),
        state="fanning_out",
        cursor="",
        members=0,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    try:
        async with session.begin_nested():
            session.add(broadcast)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = await _replay(session, idempotency_key, digest)
        if existing is None:
            raise
        return existing, False
    await session.refresh(broadcast)
    return broadcast, True


def _check_template(request: BroadcastIn, templates: Sequence[Template]) -> None:
    if not templates:
        raise field_error("template", f"no template '{request.template}'")
    if not any(t.locale == FALLBACK_LOCALE for t in templates):
        raise field_error(
            "template",
            f"template '{request.template}' has no '{FALLBACK_LOCALE}' text for the "
            "recipients whose language it lacks",
        )
    filled = STANDARD.keys() | request.parameters.keys()
    missing = sorted(
        {v for t in templates for v in variables_of(t.title) | variables_of(t.body)} - filled
    )
    if missing:
        raise InvalidInput(
            f"template '{request.template}' needs parameters: {', '.join(missing)}",
            details=[{"field": f"parameters.{name}", "message": "required"} for name in missing],
        )


async def _replay(session: AsyncSession, key: str, digest: str) -> Broadcast | None:
    existing = await broadcast_repository.find_by_idempotency_key(session, key)
    if existing is not None and existing.request_hash != digest:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request body",
            details=[{"field": "Idempotency-Key", "message": "reused with another body"}],
        )
    return existing


def variable_sources(parameters: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{variable: ("constant", text) | ("field", column) | ("attribute", name)}."""
    sources: dict[str, tuple[str, str]] = {}
    for variable, value in {**STANDARD, **parameters}.items():
        if value.startswith("@") and value[1:].isidentifier():
            name = value[1:]
            field = PATIENT_FIELDS.get(name)
            sources[variable] = ("field", field) if field else ("attribute", name)
        else:
            sources[variable] = ("constant", value)
    return sources


async def plan(session: AsyncSession, broadcast: Broadcast, settings: Settings) -> FanOutPlan:
    templates = await template_repository.with_keys(session, [broadcast.template])
    return FanOutPlan(
        broadcast=broadcast,
        texts=[LocaleText(t.locale, t.title, t.body) for t in templates],
        variables=variable_sources(broadcast.parameters),
        window_start=settings.messaging_window_start,
        window_end=settings.messaging_window_end,
        expiry_days=settings.expiry_days(broadcast.purpose),
        today=broadcast.created_at.date(),
        staff_time_zone=settings.staff_time_zone,
    )


@dataclass(frozen=True, slots=True)
class FanOutResult:
    state: str
    members: int
    chunks: int


async def fan_out(
    sessionmaker: async_sessionmaker[AsyncSession],
    broadcast_id: uuid.UUID,
    settings: Settings,
    *,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> FanOutResult:
    """Schedule the broadcast's members after its cursor, a chunk per transaction, until
    none is left or it is cancelled: its patients, then (a static group) its staff
    members after `staff_cursor`. Safe to run twice at once (the broadcast's row lock
    orders the chunks) and to resume after a crash. `on_chunk(members)` after each."""
    statements: dict[bool, ChunkStatement] = {}
    chunks = 0
    while True:
        async with sessionmaker() as session:
            broadcast = await broadcast_repository.lock(session, broadcast_id)
            if broadcast is None:
                return FanOutResult("gone", 0, chunks)
            if broadcast.state != "fanning_out":
                return FanOutResult(broadcast.state, broadcast.members, chunks)
            staff = broadcast.staff_cursor is not None
            if staff not in statements:
                fan_out_plan = await plan(session, broadcast, settings)
                statements[staff] = ChunkStatement(fan_out_plan, staff=staff)
            size = settings.broadcast_chunk_size
            cursor = (broadcast.staff_cursor if staff else broadcast.cursor) or ""
            last, members, made = await statements[staff].run(session, cursor, size)
            if last is not None and staff:
                broadcast.staff_cursor = last
            elif last is not None:
                broadcast.cursor = last
            broadcast.members += members
            if members < size and not staff and broadcast.filter is None:
                broadcast.staff_cursor = ""  # the patients are done: the staff next
            elif members < size:
                broadcast.state = "fanned_out"
            broadcast.updated_at = datetime.now(UTC)
            state, total = broadcast.state, broadcast.members
            await session.commit()
        chunks += 1
        BROADCAST_NOTIFICATIONS.inc(made)
        if on_chunk is not None:
            await on_chunk(total)
        if state != "fanning_out":
            log.info("broadcast fanned out", extra={"broadcast_id": str(broadcast_id)})
            return FanOutResult(state, total, chunks)


async def stale_broadcasts(
    session: AsyncSession, settings: Settings, now: datetime
) -> Sequence[uuid.UUID]:
    before = now - timedelta(seconds=settings.broadcast_resume_after_seconds)
    return await broadcast_repository.stale(session, before)


@dataclass(frozen=True, slots=True)
class Progress:
    members: int
    counts: dict[str, int]


async def get(session: AsyncSession, broadcast_id: uuid.UUID) -> tuple[Broadcast, Progress]:
    """The broadcast and its progress (members and counts of one snapshot)."""
    broadcast = await session.get(Broadcast, broadcast_id, populate_existing=True)
    if broadcast is None:
        raise NotFound(f"no broadcast '{broadcast_id}'")
    members, counts = await broadcast_repository.progress(session, broadcast_id)
    return broadcast, Progress(members, counts)


async def cancel(session: AsyncSession, broadcast_id: uuid.UUID) -> Broadcast:
    """Stop the fan-out and clear every notification of it not sent yet. Cancelling
    twice is a no-op; a broadcast whose every message went out is still `fanned_out`
    with nothing to clear. Raises NotFound. Flushes."""
    broadcast = await broadcast_repository.lock(session, broadcast_id)
    if broadcast is None:
        raise NotFound(f"no broadcast '{broadcast_id}'")
    if broadcast.state == "cancelled":
        return broadcast
    broadcast.state = "cancelled"
    await broadcast_repository.clear_unsent(
        session,
        broadcast_id,
        EVENT_SOURCES[NotificationEvent.CANCEL],
        EVENT_TARGET[NotificationEvent.CANCEL],
    )
    await session.flush()
    return broadcast


@dataclass(frozen=True, slots=True)
class DryRun:
    members: int
    samples: list[tuple[Patient, RenderedTemplate]]


async def dry_run(session: AsyncSession, request: BroadcastIn) -> DryRun:
    """The member count and three members' texts, rendered as the fan-out would (in
    Python here), without storing anything. Raises as `start` does."""
    group = await group_service.get_group(session, request.group)
    templates = await template_repository.with_keys(session, [request.template])
    _check_template(request, templates)
    by_locale = {t.locale: t for t in templates}
    sources = variable_sources(request.parameters)
    samples = []
    for patient in await sample_members(session, group, group_service.today(), 3):
        template = next(by_locale[c] for c in locale_candidates(patient.locale) if c in by_locale)
        values = {name: _value_of(patient, kind, value) for name, (kind, value) in sources.items()}
        samples.append(
            (
                patient,
                render_text(template.key, template.locale, template.title, template.body, values),
            )
        )
    return DryRun(await group_service.count(session, group), samples)


def _value_of(patient: Patient, kind: str, value: str) -> str:
    if kind == "constant":
        return value
    if kind == "field":
        return str(getattr(patient, value) or "")
    found = patient.attributes.get(value)
    if isinstance(found, bool):  # as PostgreSQL's ->> writes it
        return "true" if found else "false"
    return "" if found is None else str(found)
