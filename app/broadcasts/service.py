"""Broadcasts: one message to every member of a group, fanned out by the worker.

Starting one checks it and stores it (`fanning_out`, with the group's filter as it is
then); the worker's job then splits the members into lanes (BROADCAST_FAN_OUT_LANES
ranges of patient ids with as many members each, computed once and stored) and
schedules every lane at once, each on its own connection, chunk by chunk: each chunk
one INSERT ... SELECT committed with its lane's cursor (the last patient id done), so a
worker killed mid fan-out leaves every lane's cursor at its last whole chunk and
whoever resumes goes on from there, lane by lane: nobody twice (unique (broadcast_id,
patient_id) as well), nobody skipped. One statement at a time keeps one PostgreSQL
backend busy; lanes keep as many busy (docs/benchmarks.md#broadcasts).
A static group's staff members have one more lane (`staff`, unique (broadcast_id,
staff_id)), run once every patient lane is done, chunk by chunk with its own cursor the
same way; the dispatcher reaches them by email.
The notifications are ordinary ones: the dispatcher applies consent, window, switches
and rate limits to them as to any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

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
from app.templates.placeholders import FREE_TEXT_TEMPLATE, FREE_TEXT_VARIABLE, variables_of
from app.templates.service import (
    FALLBACK_LOCALE,
    RenderedTemplate,
    locale_candidates,
    render_text,
)

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
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Broadcast, bool]:
    """Check and store a broadcast; returns it and whether it was created now (the
    caller then enqueues its fan-out). Raises NotFound for an unknown group, InvalidInput
    for an unknown template, one without an `en` text, or a variable no parameter fills.
    A repeated key of the same API key (`api_key_id`) returns the first broadcast; with
    another body, InvalidInput; another API key's never matches. Flushes."""
    digest = request_hash(request)
    if idempotency_key is not None:
        existing = await _replay(session, api_key_id, idempotency_key, digest)
        if existing is not None:
            return existing, False
    group = await group_service.get_group(session, request.group)
    templates = await template_repository.with_keys(session, [request.template_key])
    _check_template(request, templates)
    broadcast = Broadcast(
        id=uuid.uuid4(),
        group_name=group.name,
        filter=group.filter,
        template=request.template_key,
        parameters=request.variables,
        purpose=request.purpose,
        send_at=request.send_at or now or datetime.now(UTC),
        channel_chain=None if request.channel_chain is None else list(request.channel_chain),
        state="fanning_out",
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    try:
        async with session.begin_nested():
            session.add(broadcast)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = await _replay(session, api_key_id, idempotency_key, digest)
        if existing is None:
            raise
        return existing, False
    await session.refresh(broadcast)
    return broadcast, True


def _check_template(request: BroadcastIn, templates: Sequence[Template]) -> None:
    key = request.template_key
    if not templates:
        raise field_error("template", f"no template '{key}'")
    if not any(t.locale == FALLBACK_LOCALE for t in templates):
        raise field_error(
            "template",
            f"template '{key}' has no '{FALLBACK_LOCALE}' text for the "
            "recipients whose language it lacks",
        )
    filled = STANDARD.keys() | request.variables.keys()
    missing = sorted(
        {v for t in templates for v in variables_of(t.title) | variables_of(t.body)} - filled
    )
    if missing:
        raise InvalidInput(
            f"template '{key}' needs parameters: {', '.join(missing)}",
            details=[{"field": f"parameters.{name}", "message": "required"} for name in missing],
        )


async def _replay(
    session: AsyncSession, api_key_id: int | None, key: str, digest: str
) -> Broadcast | None:
    existing = await broadcast_repository.find_by_idempotency_key(session, api_key_id, key)
    if existing is not None and existing.request_hash != digest:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request body",
            details=[{"field": "Idempotency-Key", "message": "reused with another body"}],
        )
    return existing


def variable_sources(template: str, parameters: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{variable: ("constant", text) | ("field", column) | ("attribute", name)}: a
    text written by hand (FREE_TEXT_TEMPLATE's) is a constant whatever it holds."""
    sources: dict[str, tuple[str, str]] = {}
    for variable, value in {**STANDARD, **parameters}.items():
        if template == FREE_TEXT_TEMPLATE and variable == FREE_TEXT_VARIABLE:
            sources[variable] = ("constant", value)
        elif value.startswith("@") and value[1:].isidentifier():
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
        variables=variable_sources(broadcast.template, broadcast.parameters),
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


def lane_rows(members: int, lanes: int) -> list[int]:
    """Where `members` members in key order split into `lanes` lanes of as many members:
    the 1-based position of the last member of each lane but the last (whose range has
    no end). Never an empty lane: fewer members than lanes make one lane per member,
    none at all one lane."""
    count = max(1, min(lanes, members))
    return [members * n // count for n in range(1, count)]


def lane_keys(quantiles: Sequence[str | None], last: str | None) -> list[str]:
    """The lanes' last keys from the members' quantiles (in key order) and their
    greatest key: each once, none at the greatest (the lane after it would be empty), so
    that fewer members than lanes make one lane per member and none one lane."""
    keys: list[str] = []
    for key in quantiles:
        if key is not None and key != last and key not in keys:
            keys.append(key)
    return keys


def lane_bounds(keys: Sequence[str]) -> list[tuple[str, str | None]]:
    """The (after, up to) ranges of the lanes that end at these member keys: the first
    after "" (every id), the last with no end (a member added since is in it)."""
    return list(zip(["", *keys], [*keys, None], strict=True))


@dataclass(slots=True)
class _Lanes:
    state: str
    statements: dict[int, ChunkStatement]  # of the lanes not done, by lane
    reached: dict[int, int]  # members reached, by lane
    staff: set[int]  # the staff lane (a static group's), run after the patient lanes


async def _open_lanes(
    sessionmaker: async_sessionmaker[AsyncSession], broadcast_id: uuid.UUID, settings: Settings
) -> _Lanes | None:
    """The broadcast's lanes, split now if this is its first fan-out (under the
    broadcast's row lock: a second job at once waits, then finds them), and a chunk
    statement for each lane not done. None when there is no such broadcast."""
    async with sessionmaker() as session:
        broadcast = await broadcast_repository.lock(session, broadcast_id)
        if broadcast is None:
            return None
        lanes = await broadcast_repository.lanes(session, broadcast_id)
        statements: dict[int, ChunkStatement] = {}
        if broadcast.state == "fanning_out":
            fan_out_plan = await plan(session, broadcast, settings)
            if not lanes:
                began = time.perf_counter()
                keys = await _split(session, broadcast, fan_out_plan.today, settings)
                # A static group's staff members: one more lane, after the patients'.
                await broadcast_repository.add_lanes(
                    session, broadcast_id, lane_bounds(keys), staff=broadcast.filter is None
                )
                lanes = await broadcast_repository.lanes(session, broadcast_id)
                log.info(
                    "broadcast split into lanes",
                    extra={
                        "broadcast_id": str(broadcast_id),
                        "lanes": len(lanes),
                        "split_ms": round((time.perf_counter() - began) * 1000, 1),
                    },
                )
            statements = {
                lane.lane: ChunkStatement(fan_out_plan, upper=lane.upper_id, staff=lane.staff)
                for lane in lanes
                if not lane.done
            }
        found = _Lanes(
            broadcast.state,
            statements,
            {lane.lane: lane.members for lane in lanes},
            {lane.lane for lane in lanes if lane.staff},
        )
        await session.commit()
    return found


async def _split(
    session: AsyncSession, broadcast: Broadcast, today: date, settings: Settings
) -> list[str]:
    """The last member key of each lane but the last. A static list: exact positions
    along its key's index (the list is read, not the patients). A filter: quantiles of
    a sample of the patients (exact on a small table): reading every patient twice (a
    count, then positions) cost a second or so at a million, before any lane starts."""
    wanted = settings.broadcast_fan_out_lanes
    if wanted == 1:
        return []
    if broadcast.filter is not None:
        quantiles, last = await broadcast_repository.member_quantiles(
            session, broadcast, today, wanted
        )
        return lane_keys(quantiles, last)
    members = await broadcast_repository.count_members(session, broadcast, today)
    return await broadcast_repository.member_keys_at(
        session, broadcast, today, lane_rows(members, wanted)
    )


async def _chunk(
    sessionmaker: async_sessionmaker[AsyncSession],
    broadcast_id: uuid.UUID,
    lane: int,
    statement: ChunkStatement,
    size: int,
) -> tuple[int, int] | None:
    """Schedule the lane's next chunk; (members the lane reached, notifications made),
    or None when the lane is done or the broadcast no longer fans out.

    The lane's row lock orders its chunks (two jobs on one broadcast take turns); the
    broadcast's state is read after it, so a cancel (which holds every lane while it
    clears) is seen by the next chunk of every lane. No lane locks the broadcast's row:
    lanes never wait for each other."""
    async with sessionmaker() as session:
        found = await broadcast_repository.lock_lane(session, broadcast_id, lane)
        if found is None or found.done:
            return None
        if await broadcast_repository.state_of(session, broadcast_id) != "fanning_out":
            return None
        last, members, made = await statement.run(session, found.cursor, size)
        if last is not None:
            found.cursor = last
        found.members += members
        found.done = members < size
        found.updated_at = datetime.now(UTC)
        reached = found.members
        await session.commit()
    return reached, made


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession], broadcast_id: uuid.UUID
) -> tuple[str, int]:
    """`fanned_out` once every lane is done; (its state, members reached)."""
    async with sessionmaker() as session:
        broadcast = await broadcast_repository.lock(session, broadcast_id)
        if broadcast is None:
            return "gone", 0
        if (
            broadcast.state == "fanning_out"
            and await broadcast_repository.lanes_left(session, broadcast_id) == 0
        ):
            broadcast.state = "fanned_out"
            log.info("broadcast fanned out", extra={"broadcast_id": str(broadcast_id)})
        state = broadcast.state
        members = await broadcast_repository.members_reached(session, broadcast_id)
        await session.commit()
    return state, members


async def fan_out(
    sessionmaker: async_sessionmaker[AsyncSession],
    broadcast_id: uuid.UUID,
    settings: Settings,
    *,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> FanOutResult:
    """Schedule the broadcast's members: every lane not done, at once (one connection
    each), from its cursor, a chunk per transaction, until none is left or it is
    cancelled; then (a static group) its staff lane, once the patient lanes are done.
    Safe to run twice at once and to resume after a crash.
    `on_chunk(members)` after each chunk, with the members of every lane reached so far.
    `sessionmaker` must give sessions on connections of their own (a pool) when the
    broadcast has more than one lane."""
    lanes = await _open_lanes(sessionmaker, broadcast_id, settings)
    if lanes is None:
        return FanOutResult("gone", 0, 0)
    if lanes.state != "fanning_out":
        return FanOutResult(lanes.state, sum(lanes.reached.values()), 0)
    chunks = 0
    size = settings.broadcast_chunk_size

    async def run_lane(lane: int, statement: ChunkStatement) -> None:
        nonlocal chunks
        while (done := await _chunk(sessionmaker, broadcast_id, lane, statement, size)) is not None:
            reached, made = done
            lanes.reached[lane] = reached
            chunks += 1
            BROADCAST_NOTIFICATIONS.inc(made)
            if on_chunk is not None:
                await on_chunk(sum(lanes.reached.values()))

    patients = {n: s for n, s in lanes.statements.items() if n not in lanes.staff}
    if len(patients) == 1:
        for lane, statement in patients.items():
            await run_lane(lane, statement)
    elif patients:
        async with asyncio.TaskGroup() as group:
            for lane, statement in patients.items():
                group.create_task(run_lane(lane, statement))
    # The staff phase: once every patient lane is done (each ran to its end above, or
    # was done already; a cancel stops them all and the staff lane's first chunk).
    for lane, statement in lanes.statements.items():
        if lane in lanes.staff:
            await run_lane(lane, statement)
    state, members = await _finish(sessionmaker, broadcast_id)
    return FanOutResult(state, members, chunks)


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
    await session.flush()
    # Every lane's chunk under way commits first (and is cleared below); every lane's
    # next chunk waits for this transaction, then sees `cancelled` and stops.
    await broadcast_repository.lock_lanes(session, broadcast_id)
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
    templates = await template_repository.with_keys(session, [request.template_key])
    _check_template(request, templates)
    by_locale = {t.locale: t for t in templates}
    sources = variable_sources(request.template_key, request.variables)
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
