"""`notify bench dashboard` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that every page answered (the bench checks each
is a 200, and that a lookup found its patient) and was timed: the counts' pages alone,
then with --pages the pages that read rows, then the same seed reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.bench import dashboard
from app.cli import cli

pytestmark = pytest.mark.e2e


def test_every_page_is_read_and_timed() -> None:
    rows = dashboard.run([2_000], 1, json_path=None).rows
    assert {row["page"] for row in rows} == set(dashboard.COUNT_PAGES)
    assert all(row["p50 ms"] > 0 for row in rows)


def test_with_pages_times_the_row_pages_and_reuses_the_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = dashboard.run([5_000], 2, tmp_path / "d.json", pages=True, deliveries=4_000)
    pages = {row["page"] for row in result.rows}
    assert set(dashboard.COUNT_PAGES) | set(dashboard.ROW_PAGES) == pages
    behind = {row["page"]: row["rows behind"] for row in result.rows}
    assert behind["webhooks"] == 4_000
    assert behind["patient page (heavy patient)"] >= 5_000 // 500
    assert behind["gateways"] > 0
    assert all(row["p95 ms"] > 0 for row in result.rows)
    assert (tmp_path / "d.json").exists()
    assert "seeding clinic_notify_bench_dashboard_pages" in capsys.readouterr().out

    again = dashboard.run([5_000], 1, None, pages=True, deliveries=4_000, reuse=True)
    assert {row["page"] for row in again.rows} == pages
    out = capsys.readouterr().out
    assert "reusing clinic_notify_bench_dashboard_pages" in out and "seeding" not in out


def test_is_registered() -> None:
    answer = CliRunner().invoke(cli, ["bench", "dashboard", "--help"])
    assert answer.exit_code == 0 and "--pages" in answer.output and "--reuse" in answer.output
