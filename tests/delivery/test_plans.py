"""The send path's statements find their rows by primary key whatever the planner's
statistics say: a settle that read its rows by state walked every `delivered` row of
the table for each batch (2 s per 500 rows on 30,000 rows; docs/benchmarks.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import repository as delivery_repository
from tests.factories import make_notification, make_patient, make_staff

pytestmark = pytest.mark.asyncio(loop_scope="session")


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of a plan (EXPLAIN's JSON), at any depth."""
    if isinstance(plan, dict):
        yield plan
        for value in plan.values():
            yield from plan_nodes(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from plan_nodes(item)


def index_names(plan: Any) -> set[str]:
    """Every index a plan reads."""
    return {node["Index Name"] for node in plan_nodes(plan) if "Index Name" in node}


def seq_scanned(plan: Any) -> set[str]:
    """Every table a plan reads whole."""
    return {
        node["Relation Name"] for node in plan_nodes(plan) if node.get("Node Type") == "Seq Scan"
    }


async def statistics_without_sent_rows(session: AsyncSession) -> None:
    """2,000 scheduled notifications, analysed: as far as the planner knows, no row is
    `sending` or `delivered` (how the table looks after a big schedule or broadcast)."""
    template = await make_notification(session, await make_patient(session))
    await session.execute(
        text(
            """
            INSERT INTO notifications
            SELECT (jsonb_populate_record(
                NULL::notifications,
                to_jsonb(n) || jsonb_build_object('id', gen_random_uuid(),
                                                  'idempotency_key', NULL))).*
            FROM notifications AS n, generate_series(1, 2000)
            WHERE n.id = :id
            """
        ),
        {"id": template.id},
    )
    await session.execute(text("ANALYZE notifications"))


async def many_like(session: AsyncSession, table: str, row_id: str, copies: int) -> None:
    """`copies` more rows of `table` like row `row_id`, each with an id of its own, and
    the table analysed: a planner that sees a small table may rightly scan it whole."""
    await session.execute(
        text(
            f"""
            INSERT INTO {table}
            SELECT (jsonb_populate_record(
                NULL::{table}, to_jsonb(t) || jsonb_build_object('id', t.id || '-' || n))).*
            FROM {table} AS t, generate_series(1, :copies) AS n
            WHERE t.id = :id
            """
        ),
        {"id": row_id, "copies": copies},
    )
    await session.execute(text(f"ANALYZE {table}"))


async def generic_plan(session: AsyncSession, statement: Any, arguments: str) -> Any:
    """EXPLAIN of `statement`'s generic plan (the one a prepared statement settles on)."""
    sql = str(statement.compile(dialect=asyncpg.dialect()))  # type: ignore[no-untyped-call]
    name = f"plan_{uuid.uuid4().hex}"
    await session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    await session.execute(text(f"PREPARE {name} AS {sql}"))
    try:
        explained = await session.scalar(text(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({arguments})"))
    finally:
        await session.execute(text(f"DEALLOCATE {name}"))
    return json.loads(explained) if isinstance(explained, str) else explained


async def test_settle_reads_its_batch_by_primary_key(db_session: AsyncSession) -> None:
    await statistics_without_sent_rows(db_session)

    plan = await generic_plan(
        db_session,
        delivery_repository._SETTLE,
        "'{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 'undeliverable'",
    )

    indexes = index_names(plan)
    assert "pk_notifications" in indexes, plan
    assert "ix_notifications_state_created" not in indexes, plan


async def test_the_claim_reads_patients_and_staff_by_primary_key(db_session: AsyncSession) -> None:
    # Left joins for both kinds of recipient: each by its primary key, never a scan of
    # patients or staff per batch (a staff member's patient, through the event, too).
    await statistics_without_sent_rows(db_session)
    await many_like(db_session, "patients", (await make_patient(db_session)).id, 5000)
    await many_like(db_session, "staff", (await make_staff(db_session)).id, 5000)

    plan = await generic_plan(db_session, delivery_repository._CLAIM, "500, NULL, 'UTC', 30")

    indexes = index_names(plan)
    assert {"pk_patients", "pk_staff"} <= indexes, plan
    # A scan of a table another test analysed while empty (messages, conversations) is
    # right and depends on the tests' order; the big ones are never scanned.
    assert not seq_scanned(plan) & {"notifications", "patients", "staff"}, plan


async def test_attempts_find_their_notifications_by_primary_key(db_session: AsyncSession) -> None:
    # Read by state, the generic plan walked every held (`sending`) notification for each
    # chunk of attempts: PostgreSQL's CPU per message doubled, on a 10,000,000-row history,
    # in one run of two (docs/benchmarks.md, "The attempts' plan").
    await statistics_without_sent_rows(db_session)

    plan = await generic_plan(db_session, delivery_repository._INSERT_ATTEMPTS, "'{}', '{}', '{}'")

    indexes = index_names(plan)
    assert "pk_notifications" in indexes, plan
    assert not indexes & {"ix_notifications_sending", "ix_notifications_state_created"}, plan
