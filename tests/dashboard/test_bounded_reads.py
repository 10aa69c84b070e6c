"""The webhooks and gateways pages read rollups and indexes: the figures agree exactly with
a recount of the rows after every kind of write, and the statements never read the whole
table (their plans)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard import repository as dashboard_repository
from app.gateways import repository as gateway_repository
from app.models import Gateway, WebhookDelivery, WebhookEndpoint
from app.webhooks import repository as webhook_repository
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The statements as the pages send them, their parameters written in.
FAILING_SQL = str(dashboard_repository._FAILING).replace(":limit", "50")
WEBHOOKS_SQL = str(dashboard_repository._WEBHOOKS)
GATEWAY_COUNTS_SQL = str(gateway_repository._COUNTS).replace(":ids", "CAST('{1,2}' AS bigint[])")


async def recount(session: AsyncSession) -> Counter[tuple[str, str]]:
    """Computed here from the rows, not from the triggers' SQL."""
    counted: Counter[tuple[str, str]] = Counter()
    for name, state in await session.execute(
        text("SELECT endpoint_name, state FROM webhook_deliveries")
    ):
        counted[(name, state)] += 1
    return counted


async def on_the_page(session: AsyncSession) -> Counter[tuple[str, str]]:
    counted: Counter[tuple[str, str]] = Counter()
    for row in await dashboard_repository.webhooks(session):
        for state in ("pending", "failed", "delivered"):
            counted[(row.name, state)] += getattr(row, state)
    return +counted


async def deltas(session: AsyncSession) -> int:
    found = await session.scalar(text("SELECT count(*) FROM webhook_delivery_count_deltas"))
    return int(found or 0)


async def add_endpoints(session: AsyncSession, *names: str) -> None:
    for name in names:
        session.add(
            WebhookEndpoint(
                name=name,
                url=f"https://{name}.clinic.test/hook",
                events=["message.received"],
                secret="whsec_test",
                active=True,
            )
        )
    await session.flush()


def attempted(
    delivery: webhook_repository.DueDelivery, outcome: str, now: datetime
) -> webhook_repository.Attempted:
    return webhook_repository.Attempted(
        id=delivery.id,
        endpoint_name=delivery.endpoint_name,
        delivered=outcome == "delivered",
        status=204 if outcome == "delivered" else 503,
        error=None if outcome == "delivered" else "HTTP 503",
        next_attempt_at=now + timedelta(minutes=5) if outcome == "retry" else None,
    )


async def test_endpoint_counts_agree_with_a_recount_after_every_kind_of_write(
    db_session: AsyncSession,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    crm, ehr = f"crm-{suffix}", f"ehr-{suffix}"
    await add_endpoints(db_session, crm, ehr)
    now = datetime.now(UTC)
    since = now - timedelta(hours=1)
    for _ in range(6):  # six events, each owed to both endpoints
        await webhook_repository.emit(db_session, "message.received", None, {"n": 1})
    assert await on_the_page(db_session) == +await recount(db_session)
    assert (await on_the_page(db_session))[(crm, "pending")] == 6

    # A claim (a new lease, no change of state) appends no delta.
    before = await deltas(db_session)
    claimed = await webhook_repository.claim_due(db_session, limit=100, lease=30)
    assert await deltas(db_session) == before
    mine = [d for d in claimed if d.endpoint_name in (crm, ehr)]
    assert len(mine) == 12
    await dashboard_repository.fold_counts(db_session)
    assert await deltas(db_session) == 0

    # Delivered, retried later, given up; folded or not, the page agrees.
    outcomes = ["delivered"] * 7 + ["retry"] * 3 + ["failed"] * 2
    await webhook_repository.record(
        db_session,
        [attempted(d, outcome, now) for d, outcome in zip(mine, outcomes, strict=True)],
        disable_before=now - timedelta(days=1),
    )
    assert await on_the_page(db_session) == +await recount(db_session)
    await dashboard_repository.fold_counts(db_session)
    assert await on_the_page(db_session) == +await recount(db_session)

    # A replay turns delivered and failed deliveries back to pending (ON CONFLICT DO
    # UPDATE: the insert's and the update's transition tables) and adds none here.
    queued = await webhook_repository.replay(
        db_session, crm, since, now + timedelta(minutes=1), ["message.received"]
    )
    assert queued == 6
    assert (await on_the_page(db_session))[(crm, "pending")] == 6
    assert await on_the_page(db_session) == +await recount(db_session)

    # A delivery deleted, then an endpoint and (cascading) all of its deliveries.
    one = await db_session.scalar(
        text("SELECT min(id) FROM webhook_deliveries WHERE endpoint_name = :name"), {"name": ehr}
    )
    await db_session.execute(delete(WebhookDelivery).where(WebhookDelivery.id == one))
    assert await on_the_page(db_session) == +await recount(db_session)
    await dashboard_repository.fold_counts(db_session)
    await db_session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.name == crm))
    await dashboard_repository.fold_counts(db_session)
    page = await on_the_page(db_session)
    assert page == +await recount(db_session)
    assert not [key for key in page if key[0] == crm]
    # The same name again starts from nothing.
    await add_endpoints(db_session, crm)
    assert {key: n for key, n in (await on_the_page(db_session)).items() if key[0] == crm} == {}

    # TRUNCATE fires none of the statement triggers: it empties the counts itself.
    await db_session.execute(text("TRUNCATE webhook_deliveries"))
    assert await on_the_page(db_session) == Counter()
    await db_session.execute(text("TRUNCATE notifications CASCADE"))
    assert await dashboard_repository.counts(db_session, since, now + timedelta(days=1)) == []


async def test_the_latest_failing_deliveries_are_the_right_ones_in_order(
    db_session: AsyncSession,
) -> None:
    name = f"crm-{uuid.uuid4().hex[:8]}"
    await add_endpoints(db_session, name)
    now = datetime.now(UTC)
    for _ in range(30):
        await webhook_repository.emit(db_session, "message.received", None, {})
    claimed = [
        d
        for d in await webhook_repository.claim_due(db_session, limit=100, lease=30)
        if d.endpoint_name == name
    ]
    outcomes = ["delivered", "retry", "failed"] * 10
    await webhook_repository.record(
        db_session,
        [attempted(d, outcome, now) for d, outcome in zip(claimed, outcomes, strict=True)],
        disable_before=now - timedelta(days=1),
    )
    # Times that do not follow the ids (one transaction: now() is the same for all).
    await db_session.execute(
        text(
            "UPDATE webhook_deliveries"
            " SET updated_at = now() - make_interval(mins => CAST(id % 7 AS int))"
            " WHERE endpoint_name = :name"
        ),
        {"name": name},
    )
    rows = (
        await db_session.execute(
            text("SELECT id, state, attempts, updated_at FROM webhook_deliveries")
        )
    ).all()
    failing = [r for r in rows if r.state == "failed" or (r.state == "pending" and r.attempts)]
    expected = [r.id for r in sorted(failing, key=lambda r: (r.updated_at, r.id), reverse=True)]
    for limit in (5, 50):
        found = await dashboard_repository.failing_deliveries(db_session, limit)
        assert [d.id for d in found] == expected[:limit]
    assert len(expected) >= 20
    assert {d.state for d in await dashboard_repository.failing_deliveries(db_session, 50)} == {
        "failed",
        "pending",
    }


async def plan(session: AsyncSession, sql: str) -> str:
    """EXPLAIN of `sql` with sequential and bitmap scans priced out: on a table this small
    the planner would rightly scan it, so what is asked is whether an index can serve."""
    await session.execute(text("SET LOCAL enable_seqscan = off"))
    await session.execute(text("SET LOCAL enable_bitmapscan = off"))
    try:
        rows = await session.execute(text(f"EXPLAIN {sql}"))
        return "\n".join(row[0] for row in rows)
    finally:
        await session.execute(text("RESET enable_seqscan"))
        await session.execute(text("RESET enable_bitmapscan"))


async def test_the_pages_statements_read_indexes_and_counts_not_whole_tables(
    db_session: AsyncSession,
) -> None:
    failing = await plan(db_session, FAILING_SQL)
    assert "ix_webhook_deliveries_failing" in failing, failing
    assert "Sort" not in failing, failing
    assert "Seq Scan on webhook_deliveries" not in failing, failing

    endpoints = await plan(db_session, WEBHOOKS_SQL)
    assert "webhook_deliveries " not in endpoints, endpoints
    assert "webhook_delivery_counts" in endpoints, endpoints

    gateways = await plan(db_session, GATEWAY_COUNTS_SQL)
    assert "ix_delivery_attempts_gateway_states" in gateways, gateways
    assert "Seq Scan on delivery_attempts" not in gateways, gateways


async def test_gateway_counts_by_state_are_the_phones_own(db_session: AsyncSession) -> None:
    phones = [Gateway(name=f"phone-{uuid.uuid4().hex[:8]}", secret_hash="0" * 64) for _ in "ab"]
    db_session.add_all(phones)
    await db_session.flush()
    patient = await make_patient(db_session)
    states = {phones[0].id: ["delivered", "delivered", "sent", None], phones[1].id: ["failed"]}
    for gateway_id, gateway_states in states.items():
        for state in gateway_states:
            notification = await make_notification(db_session, patient)
            await db_session.execute(
                text(
                    "INSERT INTO delivery_attempts (notification_id, channel, status,"
                    " gateway_id, gateway_state) VALUES (:n, 'gateway', 'sent', :g, :s)"
                ),
                {"n": notification.id, "g": gateway_id, "s": state or "forwarded-to-gateway"},
            )
    listed = {s.gateway.name: s for s in await gateway_repository.list_with_stats(db_session)}
    first, second = listed[phones[0].name], listed[phones[1].name]
    assert first.counts == {"delivered": 2, "sent": 1, "forwarded-to-gateway": 1}
    assert first.queue_depth == 1
    assert second.counts == {"failed": 1}
    assert second.queue_depth == 0
