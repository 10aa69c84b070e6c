"""`notify bench invitations` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and reaches every patient."""

from __future__ import annotations

import pytest

from app.bench import invitations

pytestmark = pytest.mark.e2e


def test_throughput() -> None:
    [row] = invitations.run([300], concurrency=20, batch=100, json_path=None).rows
    assert row["reached"] == 300
    assert row["counts"] == {"invited": 270, "no_imo_account": 30}
