"""`notify invite`: a round worked in this process, with its progress and summary."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from app.imo import service as imo_service
from app.imo.terminal import run_round
from tests.fake_servers import FakeImo
from tests.imo.conftest import round_settings
from tests.imo.helpers import invite_phone, seed_patients
from tests.stack import Database, Services

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_round_runs_to_the_end_with_a_summary(
    db: Database, fake_imo: FakeImo, services: Services
) -> None:
    async with db.engine.begin() as connection:
        await seed_patients(connection, [invite_phone(n, 3 if n % 4 else 0) for n in range(40)])
    settings = round_settings(db, fake_imo, redis_url=services.redis_url)
    console = Console(record=True, width=120, force_terminal=False)

    assert await run_round(settings, None, console) == 0

    out = console.export_text()
    assert "Invitation round" in out and "completed" in out
    rows = {line.split()[1]: line.split()[-2] for line in out.splitlines() if line.count("│") == 3}
    assert (rows["invited"], rows["no_imo_account"], rows["reached"]) == ("30", "10", "40")
    assert sum(fake_imo.requests_per_phone().values()) == 40


async def test_a_running_round_is_named_and_nothing_is_sent(
    db: Database, fake_imo: FakeImo, services: Services
) -> None:
    async with db.engine.begin() as connection:
        await seed_patients(connection, [invite_phone(1, 3)])
    settings = round_settings(db, fake_imo, redis_url=services.redis_url)
    async with db.sessionmaker() as session:
        running = await imo_service.start_round(
            session, settings, trigger="api", now=datetime.now(UTC)
        )
        await session.commit()
    console = Console(record=True, width=120)

    assert await run_round(settings, None, console) == 1
    assert f"invitation round {running.id} is running" in console.export_text()
    assert fake_imo.requests_per_phone() == {}
