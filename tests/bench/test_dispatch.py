"""`notify bench dispatch` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that nothing was lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bench import dispatch

pytestmark = pytest.mark.e2e


def test_sends_everything_and_writes_its_figures(tmp_path: Path) -> None:
    result = dispatch.run([300], [1], concurrency=20, batch=100, json_path=tmp_path / "d.json")
    [row] = result.rows
    assert row["sent"] == 300 and row["other states"] == {}
    assert (tmp_path / "d.json").exists()
