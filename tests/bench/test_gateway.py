"""`notify bench gateway` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that every poll was answered (the bench checks
each is a 200) and each round timed."""

from __future__ import annotations

import pytest

from app.bench import gateway

pytestmark = pytest.mark.e2e


def test_every_round_of_polls_is_timed() -> None:
    rows = gateway.run([2_000], polls=5, rounds=2, json_path=None).rows
    assert [row["round"] for row in rows] == ["1", "2", "median of 2"]
    assert all(row["p50 ms"] > 0 for row in rows)
