"""`notify experiments report`: the results table and the per-patient CSV."""

from __future__ import annotations

import csv
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from app.cli import cli
from app.experiments import repository as experiment_repository
from app.experiments.report import CSV_COLUMNS, p_value_text, report_from, run_report
from tests.appointments.helpers import create_experiment, days, put_appointment, put_plan
from tests.clock import daytime_zone
from tests.factories import make_patient
from tests.stack import Services


@pytest.mark.asyncio(loop_scope="session")
class TestReport:
    async def test_prints_the_groups_and_writes_a_row_per_patient(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        experiment = await create_experiment(api, await put_plan(api), return_window_days=3)
        patients = [await make_patient(db_session, time_zone=daytime_zone()) for _ in range(6)]
        appointments = [await put_appointment(api, p.id, days(1)) for p in patients]
        visited_at = datetime.now(UTC)
        visit = await api.post(
            f"/v1/appointments/{appointments[0]['id']}/visit",
            json={"visited_at": visited_at.isoformat()},
        )
        assert visit.status_code == 200
        # Days counted on the patient's calendar: "tomorrow" in UTC is -1 or -2 days away
        # from today where the patient is, by the hour (found just after midnight UTC).
        local_day = visited_at.astimezone(ZoneInfo(patients[0].time_zone)).date()
        days_to_return = (local_day - date.fromisoformat(days(1))).days
        path = tmp_path / "patients.csv"

        code = await report_from(db_session, uuid.UUID(experiment["id"]), path)

        assert code == 0
        out = capsys.readouterr().out
        assert experiment["name"] in out and "control" in out and "g1" in out
        # Not a terminal (pytest captures it, as a pipe or a file would): no cell is cut.
        assert "…" not in out
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert {r["patient_id"] for r in rows} == {p.id for p in patients}
        by_patient = {r["patient_id"]: r for r in rows}
        first = by_patient[patients[0].id]
        assert (first["returned"], first["days_to_return"], first["evicted_reason"]) == (
            "true",
            str(days_to_return),
            "",
        )
        assert by_patient[patients[1].id]["returned"] == "false"
        assert by_patient[patients[1].id]["days_to_return"] == ""
        assert {r["group"] for r in rows} <= {"control", "g1"}
        assert {r["appointment_date"] for r in rows} == {days(1)}
        # The rows come in keyset-paginated batches: across batches, each member once.
        paged = experiment_repository.patient_rows(
            db_session, uuid.UUID(experiment["id"]), 3, batch=4
        )
        assert sorted([row.patient_id async for row in paged]) == sorted(p.id for p in patients)

    async def test_an_experiment_is_named_by_its_name_as_well(
        self, api: httpx.AsyncClient, db_session: AsyncSession, capsys: pytest.CaptureFixture[str]
    ) -> None:
        experiment = await create_experiment(api, await put_plan(api))
        assert await report_from(db_session, experiment["name"], None) == 0
        assert experiment["name"] in capsys.readouterr().out
        assert await report_from(db_session, experiment["id"], None) == 0
        assert await report_from(db_session, "no-such-experiment", None) == 1
        assert "no experiment named 'no-such-experiment'" in capsys.readouterr().err

    async def test_an_unknown_experiment_exits_1(
        self, db_session: AsyncSession, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await report_from(db_session, uuid.uuid4(), None) == 1
        assert "no experiment" in capsys.readouterr().err

    async def test_runs_on_its_own_read_only_snapshot(
        self, services: Services, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await run_report(services.database_url, uuid.uuid4(), None) == 1
        assert "no experiment" in capsys.readouterr().err


class TestPValueText:
    @pytest.mark.parametrize(
        ("p_value", "text"), [(0.04321, "0.0432"), (6.76e-122, "6.76e-122"), (0.0, "<1e-300")]
    )
    def test_never_shows_an_underflowed_p_as_zero(self, p_value: float, text: str) -> None:
        assert p_value_text(p_value) == text


class TestCommand:
    def test_is_registered(self) -> None:
        answer = CliRunner().invoke(cli, ["experiments", "report", "--help"])
        assert answer.exit_code == 0 and "--csv" in answer.output
        missing = CliRunner().invoke(cli, ["experiments", "report"])
        assert missing.exit_code == 2  # an id or a name is required
