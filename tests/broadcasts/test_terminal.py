"""`notify broadcast`: the dry run's count and samples, and a real run's progress."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from app.models import Group, Notification, Template
from tests.factories import make_patient
from tests.stack import Database
from tests.test_cli import run_notify

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def a_group_of_five(db: Database) -> None:
    async with db.sessionmaker() as session:
        for n in range(5):
            await make_patient(session, id=f"cli-{n}", full_name=f"Patient {n}", locale="en")
        session.add(Group(name="cli-group", filter={"country": ["BD"]}))
        if await session.scalar(select(Template).where(Template.key == "cli.camp")) is None:
            session.add(
                Template(key="cli.camp", locale="en", title="Camp", body="{patient_name}: {day}")
            )
        await session.commit()


class TestBroadcastCommand:
    async def test_dry_run_counts_and_shows_three_texts(self, db: Database) -> None:
        await a_group_of_five(db)
        result = await asyncio.to_thread(
            run_notify,
            "broadcast", "cli-group", "cli.camp", "--param", "day=Friday", "--dry-run",
            env={"DATABASE_URL": db.url},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        assert "5 members" in result.stdout
        assert [line for line in result.stdout.splitlines() if line.startswith("- ")] == [
            f"- cli-{n} (en): Patient {n}: Friday" for n in range(3)
        ]
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(Notification)) == 0

    async def test_a_text_instead_of_a_template(self, db: Database) -> None:
        await a_group_of_five(db)
        result = await asyncio.to_thread(
            run_notify,
            "broadcast", "cli-group", "--text", "Closed on Friday", "--dry-run",
            env={"DATABASE_URL": db.url},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        assert [line for line in result.stdout.splitlines() if line.startswith("- ")] == [
            f"- cli-{n} (en): Closed on Friday" for n in range(3)
        ]
        both = await asyncio.to_thread(
            run_notify,
            "broadcast", "cli-group", "cli.camp", "--text", "Closed", "--dry-run",
            env={"DATABASE_URL": db.url},
        )  # fmt: skip
        assert both.returncode == 2 and "one of the two" in both.stderr

    async def test_a_run_schedules_every_member(self, db: Database) -> None:
        await a_group_of_five(db)
        result = await asyncio.to_thread(
            run_notify,
            "broadcast", "cli-group", "cli.camp", "--param", "day=Friday",
            env={"DATABASE_URL": db.url},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        assert "5 notifications scheduled (fanned_out)" in result.stdout
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(Notification)) == 5

    async def test_a_missing_parameter_is_refused(self, db: Database) -> None:
        await a_group_of_five(db)
        result = await asyncio.to_thread(
            run_notify, "broadcast", "cli-group", "cli.camp", env={"DATABASE_URL": db.url}
        )
        assert result.returncode == 1
        assert "parameters.day: required" in result.stdout
