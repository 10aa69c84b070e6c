"""Monthly partitions of the raw report log: created ahead, rows the default partition
caught moved into their month, expired months detached and dropped whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

import app.models  # noqa: F401  (every table, for the comparison)
from app.db.base import Base
from app.devtools.environment import alembic_config
from app.models import DeliveryAttempt, DeliveryReport
from app.retention import partitions
from app.retention.partitions import MONTHLY_LOGS, month_start, partition_name
from tests.factories import make_notification, make_patient
from tests.stack import Services, migrated_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPORTS = MONTHLY_LOGS[0]


async def attempt(session: AsyncSession) -> DeliveryAttempt:
    notification = await make_notification(session, await make_patient(session), state="sent")
    row = DeliveryAttempt(notification_id=notification.id, channel="sms", status="sent")
    session.add(row)
    await session.flush()
    return row


async def report_at(session: AsyncSession, attempt_id: int, at: datetime) -> int:
    report = DeliveryReport(attempt_id=attempt_id, status="delivered", applied=True, received_at=at)
    session.add(report)
    await session.flush()
    return report.id


async def where(session: AsyncSession, report_id: int) -> str:
    """The partition that holds report `report_id`."""
    found = await session.scalar(
        text("SELECT tableoid::regclass::text FROM delivery_reports WHERE id = :id"),
        {"id": report_id},
    )
    return str(found)


class TestMonths:
    async def test_month_arithmetic_crosses_years(self) -> None:
        assert month_start(date(2026, 12, 31), 1) == date(2027, 1, 1)
        assert month_start(date(2027, 1, 5), -13) == date(2025, 12, 1)
        assert partition_name("delivery_reports", date(2027, 3, 1)) == ("delivery_reports_y2027m03")

    async def test_partitions_are_told_from_other_tables(self) -> None:
        assert partitions.is_partition("delivery_reports_y2027m03")
        assert partitions.is_partition("delivery_reports_default")
        assert not partitions.is_partition("delivery_reports")
        assert not partitions.is_partition("delivery_attempts_y2027m03")  # not partitioned


class TestCreateAhead:
    async def test_this_month_and_three_ahead_once(self, db_session: AsyncSession) -> None:
        created = await partitions.create_ahead(db_session, REPORTS, date(2031, 11, 20))
        assert created == [
            "delivery_reports_y2031m11",
            "delivery_reports_y2031m12",
            "delivery_reports_y2032m01",
            "delivery_reports_y2032m02",
        ]
        assert await partitions.create_ahead(db_session, REPORTS, date(2031, 11, 21)) == []

    async def test_the_migration_left_this_month_and_three_ahead(
        self, db_session: AsyncSession
    ) -> None:
        months = await partitions.month_partitions(db_session, REPORTS)
        this_month = month_start(datetime.now(UTC).date())
        assert [month_start(this_month, k) for k in range(4)] == [
            m for m in months if m >= this_month
        ][:4]

    async def test_rows_the_default_partition_caught_move_into_their_month(
        self, db_session: AsyncSession
    ) -> None:
        """No partition for the month yet (the job fell behind): the insert still works,
        and the job later moves the row into the month's partition, losing nothing."""
        tried = await attempt(db_session)
        late = await report_at(db_session, tried.id, datetime(2033, 4, 30, 23, 59, tzinfo=UTC))
        other = await report_at(db_session, tried.id, datetime(2033, 6, 1, tzinfo=UTC))
        assert await where(db_session, late) == "delivery_reports_default"

        await partitions.create_ahead(db_session, REPORTS, date(2033, 4, 1), months_ahead=0)

        assert await where(db_session, late) == "delivery_reports_y2033m04"
        assert await where(db_session, other) == "delivery_reports_default"
        total = select(func.count()).select_from(DeliveryReport)
        assert await db_session.scalar(total.where(DeliveryReport.attempt_id == tried.id)) == 2
        # The moved partition is a full one: its foreign key cascades like the others'.
        await db_session.delete(tried)
        await db_session.flush()
        assert await db_session.scalar(total.where(DeliveryReport.attempt_id == tried.id)) == 0


class TestDropExpired:
    async def test_whole_months_older_than_the_retention_go_and_newer_stay(
        self, db_session: AsyncSession
    ) -> None:
        await partitions.create_ahead(db_session, REPORTS, date(2034, 1, 1), months_ahead=5)
        tried = await attempt(db_session)
        old = await report_at(db_session, tried.id, datetime(2034, 1, 31, 23, 0, tzinfo=UTC))
        kept = await report_at(db_session, tried.id, datetime(2034, 2, 1, 0, 0, tzinfo=UTC))

        assert await partitions.drop_expired(db_session, REPORTS, date(2034, 6, 10), 0) == []
        dropped = await partitions.drop_expired(db_session, REPORTS, date(2034, 6, 10), 4)

        assert "delivery_reports_y2034m01" in dropped
        assert not [name for name in dropped if name >= "delivery_reports_y2034m02"]
        ids = set(await db_session.scalars(select(DeliveryReport.id)))
        assert old not in ids and kept in ids
        assert await db_session.scalar(
            text("SELECT to_regclass('delivery_reports_y2034m01') IS NULL")
        )

    async def test_the_daily_job_does_both(self, db_session: AsyncSession) -> None:
        done = await partitions.maintain(db_session, 2, now=datetime(2035, 3, 2, tzinfo=UTC))
        assert done["created"][0] == "delivery_reports_y2035m03"
        assert "delivery_reports_y2035m01" not in done["dropped"]  # two months: Jan, Feb kept
        assert all(name < "delivery_reports_y2035m01" for name in done["dropped"])


class TestMigration:
    async def test_down_and_up_again_keeps_every_report_and_matches_the_models(
        self, services: Services
    ) -> None:
        async with migrated_database(services, "clinic_notify_partitions") as database:
            async with database.sessionmaker() as session:
                tried = await attempt(session)
                ids = [
                    await report_at(session, tried.id, datetime(2025, 7, 4, tzinfo=UTC)),
                    await report_at(session, tried.id, datetime.now(UTC)),
                ]
                await session.commit()
            config = alembic_config(database.url, configure_logging=False)
            await asyncio.to_thread(command.downgrade, config, "20261205_partitioned_reports-1")
            await asyncio.to_thread(command.upgrade, config, "head")
            await database.engine.dispose()
            async with database.sessionmaker() as session:
                assert sorted(await session.scalars(select(DeliveryReport.id))) == sorted(ids)
                assert await where(session, ids[0]) == "delivery_reports_y2025m07"
                # The sequence carried on: a new report gets a new id.
                new = await report_at(session, tried.id, datetime.now(UTC))
                assert new > max(ids)
                async with database.engine.connect() as connection:
                    diff = await connection.run_sync(
                        lambda sync: compare_metadata(
                            MigrationContext.configure(
                                sync,
                                opts={
                                    "compare_type": True,
                                    "include_name": lambda name, type_, _: (
                                        not (
                                            type_ == "table" and partitions.is_partition(name or "")
                                        )
                                    ),
                                },
                            ),
                            Base.metadata,
                        )
                    )
                assert diff == []
