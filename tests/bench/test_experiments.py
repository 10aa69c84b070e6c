"""`notify bench experiments` in a small smoke mode: it seeds, measures and explains."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.bench import experiments
from app.cli import cli

pytestmark = pytest.mark.e2e


def test_seeds_times_and_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = experiments.run([3_000], 2, tmp_path / "e.json", explain=True)
    [row] = result.rows
    assert (row["memberships"], row["csv rows"]) == (3_000, 3_000)
    assert row["notifications"] > 0 and row["attempts"] > 0
    assert (tmp_path / "e.json").exists()
    assert "Execution Time" in capsys.readouterr().out


def test_is_registered() -> None:
    answer = CliRunner().invoke(cli, ["bench", "experiments", "--help"])
    assert answer.exit_code == 0 and "--explain" in answer.output
