"""SQL of broadcasts: its lanes, the fan-out of one chunk as one statement, progress,
cancel.

A broadcast's members are split into lanes, ranges of the member key (the patient id:
the group_members primary key for a static list, the patients primary key under a
filter) with as many members each. A chunk is the next `size` members of a lane after
its cursor, in patient id order; one INSERT ... SELECT renders the text for all of them
in SQL (the template of each patient's locale, its `{variables}` replaced by constants
or by the patient's own fields) and puts each due inside the messaging window of the
patient's time zone.
A static group's staff members have one more lane of their own (`staff`), run once
every patient lane is done, by the same statement over group_staff_members and staff in
staff id order (their name for `@name`, no facility or attributes, the window of
STAFF_TIME_ZONE: staff have no time zone of their own).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.groups import repository as group_repository
from app.models import Broadcast, BroadcastLane, Notification


async def lock(session: AsyncSession, broadcast_id: uuid.UUID) -> Broadcast | None:
    return await session.scalar(
        select(Broadcast).where(Broadcast.id == broadcast_id).with_for_update(),
        execution_options={"populate_existing": True},
    )


async def find_by_idempotency_key(
    session: AsyncSession, api_key_id: int | None, key: str
) -> Broadcast | None:
    return await session.scalar(
        select(Broadcast).where(
            Broadcast.api_key_id == api_key_id, Broadcast.idempotency_key == key
        )
    )


async def stale(session: AsyncSession, before: datetime) -> Sequence[uuid.UUID]:
    """Broadcasts still fanning out that no worker has moved since `before`: neither the
    broadcast nor any of its lanes changed since."""
    moved = (
        select(BroadcastLane.broadcast_id)
        .where(BroadcastLane.broadcast_id == Broadcast.id, BroadcastLane.updated_at >= before)
        .exists()
    )
    return (
        await session.scalars(
            select(Broadcast.id).where(
                Broadcast.state == "fanning_out", Broadcast.updated_at < before, ~moved
            )
        )
    ).all()


# Lanes.


def _members_sql(broadcast: Broadcast, today: date) -> tuple[str, str, dict[str, Any]]:
    """(FROM ... WHERE of the broadcast's members, their key column, its parameters)."""
    if broadcast.filter is None:
        return (
            "FROM group_members m WHERE m.group_name = :group_name",
            "m.patient_id",
            {"group_name": broadcast.group_name},
        )
    where_sql, params = group_repository.matches(broadcast.filter, today)
    return f"FROM patients p WHERE ({where_sql})", "p.id", params


# Patients a filter group's split reads at most (a sample of the table, BERNOULLI: each
# row with the same chance): the lanes' bounds are quantiles of the members sampled.
SAMPLED_PATIENTS = 50_000


async def member_quantiles(
    session: AsyncSession, broadcast: Broadcast, today: date, lanes: int
) -> tuple[list[str | None], str | None]:
    """A filter group's member keys at fractions 1/lanes, 2/lanes, ... of its members
    in key order, and its greatest key: exact on a table of up to SAMPLED_PATIENTS
    patients (every row read), else of a sample of that many (each patient with the
    same chance: the bounds are off by a fraction of a percent of the members, and the
    filter and a sort run over the sample only, not over every patient twice)."""
    assert broadcast.filter is not None
    estimated = await session.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = 'patients'::regclass")
    )
    rows = float(estimated or 0)
    percent = 100.0 if rows <= SAMPLED_PATIENTS else 100.0 * SAMPLED_PATIENTS / rows
    where_sql, params = group_repository.matches(broadcast.filter, today)
    statement = text(
        "SELECT percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY p.id), "  # noqa: S608
        f"max(p.id) FROM patients p TABLESAMPLE BERNOULLI (:percent) WHERE ({where_sql})"
    )
    fractions = [n / lanes for n in range(1, lanes)]
    quantiles, last = (
        await session.execute(statement, {**params, "fractions": fractions, "percent": percent})
    ).one()
    return list(quantiles or []), last


async def count_members(session: AsyncSession, broadcast: Broadcast, today: date) -> int:
    source, _, params = _members_sql(broadcast, today)
    # `source` is this module's SQL (and matches()'); its values are bind parameters.
    return int(await session.scalar(text(f"SELECT count(*) {source}"), params) or 0)


async def member_keys_at(
    session: AsyncSession, broadcast: Broadcast, today: date, rows: Sequence[int]
) -> list[str]:
    """The member keys (patient ids) at these 1-based positions of the members in key
    order: one walk of the key's index, whatever the number of positions."""
    if not rows:
        return []
    source, key, params = _members_sql(broadcast, today)
    statement = text(
        f"SELECT k FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS r "  # noqa: S608
        f"{source}) AS s WHERE r = ANY(:rows) ORDER BY r"
    )
    return list(await session.scalars(statement, {**params, "rows": list(rows)}))


async def lanes(session: AsyncSession, broadcast_id: uuid.UUID) -> Sequence[BroadcastLane]:
    """The broadcast's lanes in key order, as stored now."""
    return (
        await session.scalars(
            select(BroadcastLane)
            .where(BroadcastLane.broadcast_id == broadcast_id)
            .order_by(BroadcastLane.lane),
            execution_options={"populate_existing": True},
        )
    ).all()


async def add_lanes(
    session: AsyncSession,
    broadcast_id: uuid.UUID,
    bounds: Sequence[tuple[str, str | None]],
    *,
    staff: bool = False,
) -> None:
    """Lanes over these (after, up to) ranges of patient ids, each at the start of its
    range; `staff`: and after them one staff lane over every staff id (a static group's
    staff members, fanned out once the patient lanes are done)."""
    rows: list[dict[str, Any]] = [
        {
            "broadcast_id": broadcast_id,
            "lane": n,
            "lower_id": lower,
            "upper_id": upper,
            "cursor": lower,
            "members": 0,
            "done": False,
            "staff": False,
        }
        for n, (lower, upper) in enumerate(bounds)
    ]
    if staff:
        rows.append(
            {
                "broadcast_id": broadcast_id,
                "lane": len(bounds),
                "lower_id": "",
                "upper_id": None,
                "cursor": "",
                "members": 0,
                "done": False,
                "staff": True,
            }
        )
    await session.execute(insert(BroadcastLane).values(rows))


async def lock_lane(
    session: AsyncSession, broadcast_id: uuid.UUID, lane: int
) -> BroadcastLane | None:
    return await session.scalar(
        select(BroadcastLane)
        .where(BroadcastLane.broadcast_id == broadcast_id, BroadcastLane.lane == lane)
        .with_for_update(),
        execution_options={"populate_existing": True},
    )


async def lock_lanes(session: AsyncSession, broadcast_id: uuid.UUID) -> None:
    """Wait for every lane's chunk under way to commit, and hold the lanes until this
    transaction ends (always in lane order: no deadlock between two of these)."""
    await session.execute(
        select(BroadcastLane.lane)
        .where(BroadcastLane.broadcast_id == broadcast_id)
        .order_by(BroadcastLane.lane)
        .with_for_update()
    )


async def state_of(session: AsyncSession, broadcast_id: uuid.UUID) -> str | None:
    return await session.scalar(select(Broadcast.state).where(Broadcast.id == broadcast_id))


async def lanes_left(session: AsyncSession, broadcast_id: uuid.UUID) -> int:
    """Lanes not done (none at all before they are made counts as one)."""
    left, made = (
        await session.execute(
            select(func.count().filter(BroadcastLane.done.is_(False)), func.count()).where(
                BroadcastLane.broadcast_id == broadcast_id
            )
        )
    ).one()
    return int(left) if made else 1


async def members_reached(session: AsyncSession, broadcast_id: uuid.UUID) -> int:
    found = await session.scalar(
        select(func.sum(BroadcastLane.members)).where(BroadcastLane.broadcast_id == broadcast_id)
    )
    return int(found or 0)


@dataclass(frozen=True, slots=True)
class LocaleText:
    locale: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class FanOutPlan:
    """What every chunk of one broadcast's fan-out binds: fixed for the broadcast."""

    broadcast: Broadcast
    texts: Sequence[LocaleText]  # one per locale of the template; `en` among them
    # {variable: ("constant", value) | ("field", column) | ("attribute", name)}
    variables: dict[str, tuple[str, str]]
    window_start: time
    window_end: time
    expiry_days: int
    today: date
    staff_time_zone: str = "UTC"


def _value_sql(kind: str, value: str, name: str, params: dict[str, Any]) -> str:
    params[name] = value
    if kind == "constant":
        return f":{name}"
    if kind == "field":
        return {"full_name": "c.full_name", "facility_name": "coalesce(c.facility_name, '')"}[value]
    return f"coalesce(c.attributes ->> :{name}, '')"


# Ids of the notifications a chunk makes: time-ordered (version 7, app/ids.py), landing
# at the right edge of the primary key; random (version 4) ones, which land all over its
# pages, only for `notify bench fanout` to compare.
NEW_IDS = {"time-ordered": "time_ordered_uuid()", "random": "gen_random_uuid()"}


# A staff member as the chunk reads a member (over `staff` as p).
_STAFF_MEMBER = (
    "p.id, p.name AS full_name, CAST(NULL AS text) AS facility_name,"
    " CAST('{}' AS jsonb) AS attributes, p.locale,"
    " CAST(:staff_time_zone AS text) AS time_zone, CAST(NULL AS varchar(2)) AS country"
)
_PATIENT_MEMBER = (
    "p.id, p.full_name, p.facility_name, p.attributes, p.locale, p.time_zone, p.country"
)


def _chunk_sql(
    plan: FanOutPlan,
    params: dict[str, Any],
    ids: str = "time-ordered",
    country: bool = True,
    bounded: bool = False,
    staff: bool = False,
) -> str:
    """The statement of one chunk, with its parameters put in `params`: of patients, or
    (`staff`) of a static group's staff members; `bounded`: the members up to `:upper`
    only."""
    broadcast = plan.broadcast

    member, recipient = _PATIENT_MEMBER, "patient_id"
    if staff:
        member, recipient = _STAFF_MEMBER, "staff_id"
        params["staff_time_zone"] = plan.staff_time_zone
        key = "m.staff_id"
        source = (
            "FROM group_staff_members m JOIN staff p ON p.id = m.staff_id "
            "WHERE m.group_name = :group_name AND m.staff_id > :cursor"
        )
    elif broadcast.filter is None:
        key = "m.patient_id"
        source = (
            "FROM group_members m JOIN patients p ON p.id = m.patient_id "
            "WHERE m.group_name = :group_name AND m.patient_id > :cursor"
        )
    else:
        key = "p.id"
        where_sql, filter_params = group_repository.matches(broadcast.filter, plan.today)
        params.update(filter_params)
        source = f"FROM patients p WHERE ({where_sql}) AND p.id > :cursor"
    # A lane's range ends at its upper key (included); the last lane's has no end.
    if bounded:
        source += f" AND {key} <= :upper"
    source += f" ORDER BY {key}"
    # The patient's locale, else its language, else English (templates.locale_candidates).
    exact = " ".join(f"WHEN c.locale = :loc{n} THEN {n}" for n, t in enumerate(plan.texts))
    language = " ".join(
        f"WHEN split_part(c.locale, '-', 1) = :loc{n} THEN {n}"
        for n, t in enumerate(plan.texts)
        if "-" not in t.locale
    )
    english = next(n for n, t in enumerate(plan.texts) if t.locale == "en")
    values = ", ".join(f"({n}, :loc{n}, :title{n}, :body{n})" for n in range(len(plan.texts)))
    for n, locale_text in enumerate(plan.texts):
        params[f"loc{n}"] = locale_text.locale
        params[f"title{n}"] = locale_text.title
        params[f"body{n}"] = locale_text.body
    title, body = "t.title", "t.body"
    for n, (variable, (kind, value)) in enumerate(sorted(plan.variables.items())):
        value_sql = _value_sql(kind, value, f"v{n}", params)
        params[f"k{n}"] = "{" + variable + "}"
        title = f"replace({title}, :k{n}, {value_sql})"
        body = f"replace({body}, :k{n}, {value_sql})"
    # Per time zone of the chunk (a handful), not per patient: AT TIME ZONE is dear.
    local = "(:send_at AT TIME ZONE z.time_zone)"
    due = (
        f"CASE WHEN {local}::time >= :window_start AND {local}::time < :window_end "
        f"THEN :send_at "
        f"WHEN {local}::time < :window_start "
        f"THEN ({local}::date + :window_start) AT TIME ZONE z.time_zone "
        f"ELSE ({local}::date + 1 + :window_start) AT TIME ZONE z.time_zone END"
    )
    params.update(
        group_name=broadcast.group_name,
        broadcast_id=broadcast.id,
        purpose=broadcast.purpose,
        template=broadcast.template,
        variables=broadcast.parameters,
        send_at=broadcast.send_at,
        chain=broadcast.channel_chain,
        window_start=plan.window_start,
        window_end=plan.window_end,
        expiry=timedelta(days=plan.expiry_days),
    )
    # Every value is a bind parameter; only names and SQL fragments of this module are
    # spliced in.
    return f"""
WITH chunk AS (
  SELECT {member}
  {source}
  LIMIT :size
), zones AS (
  SELECT z.time_zone, {due} AS due FROM (SELECT DISTINCT time_zone FROM chunk) AS z
), made AS (
  INSERT INTO notifications (id, {recipient}, purpose, template_key, locale, variables,
    title, body, send_at, state, due_at, expires_at, channel_chain, channel_index,
    retry_count, broadcast_id, group_name, country)
  SELECT {NEW_IDS[ids]}, c.id, :purpose, :template, t.locale,
    CAST(:variables AS jsonb), left({title}, 200), {body}, :send_at, 'scheduled',
    d.due, d.due + :expiry, {"NULL" if staff else "CAST(:chain AS varchar(20)[])"}, 0, 0,
    :broadcast_id, :group_name, {"c.country" if country else "NULL"}
  FROM chunk c
  JOIN (VALUES {values}) AS t(n, locale, title, body)
    ON t.n = CASE {exact} {language} ELSE {english} END
  JOIN zones d ON d.time_zone = c.time_zone
  ON CONFLICT (broadcast_id, {recipient})
    WHERE {
        "broadcast_id IS NOT NULL AND staff_id IS NOT NULL" if staff else "broadcast_id IS NOT NULL"
    } DO NOTHING
  RETURNING 1
)
SELECT (SELECT max(id) FROM chunk), (SELECT count(*) FROM chunk), (SELECT count(*) FROM made)
"""  # noqa: S608


class ChunkStatement:
    """One lane's chunk statement, built once and run per chunk."""

    def __init__(
        self,
        plan: FanOutPlan,
        ids: str = "time-ordered",
        country: bool = True,
        *,
        upper: str | None = None,
        staff: bool = False,
    ) -> None:
        """`ids`: a kind of NEW_IDS; `country`: written from the member (else left for
        the trigger to look up per row, as `notify bench fanout` compares); `upper`: the
        last member key of the lane (none: every member after the cursor); `staff`: of
        the group's staff members instead of its patients (the staff lane)."""
        self.params: dict[str, Any] = {}
        sql = _chunk_sql(plan, self.params, ids, country, bounded=upper is not None, staff=staff)
        self.params["variables"] = json.dumps(self.params["variables"])
        if upper is not None:
            self.params["upper"] = upper
        self.statement = text(sql)

    async def run(
        self, session: AsyncSession, cursor: str, size: int
    ) -> tuple[str | None, int, int]:
        """(last patient (or staff) id of the chunk, members in it, notifications made)."""
        row = (
            await session.execute(self.statement, {**self.params, "cursor": cursor, "size": size})
        ).one()
        return row[0], int(row[1]), int(row[2])


PROGRESS = text(
    """
SELECT (SELECT coalesce(sum(l.members), 0) FROM broadcast_lanes l WHERE l.broadcast_id = b.id),
  m.state, m.count
FROM broadcasts b
LEFT JOIN (
  SELECT state, count(*) AS count FROM notifications
  WHERE broadcast_id = :id AND state <> 'scheduled' GROUP BY state
) AS m ON true
WHERE b.id = :id
"""
)


async def progress(session: AsyncSession, broadcast_id: uuid.UUID) -> tuple[int, dict[str, int]]:
    """(members reached, {state: notifications of the broadcast in it}), read in one
    statement: one snapshot, so a chunk committed meanwhile (with its lane's members) is
    in both or in neither.

    Only the notifications that left `scheduled` are counted (along
    ix_notifications_broadcast_moved: none while the fan-out runs ahead of the
    dispatcher); every member has exactly one notification, so the rest are scheduled.
    """
    members = 0
    counts: dict[str, int] = {}
    for reached, state, count in await session.execute(PROGRESS, {"id": broadcast_id}):
        members = int(reached)
        if state is not None:
            counts[state] = int(count)
    # A member deleted since (the notification goes with the patient) is not subtracted.
    counts["scheduled"] = max(0, members - sum(counts.values()))
    return members, counts


async def clear_unsent(
    session: AsyncSession,
    broadcast_id: uuid.UUID,
    unsent: Collection[str],
    cleared: str,
) -> int:
    result = await session.execute(
        update(Notification)
        .where(Notification.broadcast_id == broadcast_id, Notification.state.in_(unsent))
        .values(state=cleared, failure_reason="broadcast cancelled", updated_at=func.now()),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
