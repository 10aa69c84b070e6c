"""`notify bench dashboard` in a small smoke mode: the counts' pages, and with --pages the
pages that read rows (every one found its patient), then the same seed reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.bench import dashboard
from app.cli import cli

pytestmark = pytest.mark.e2e


def test_times_every_page_and_reuses_the_seed(
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
