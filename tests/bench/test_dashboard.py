"""`notify bench dashboard` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that every page answered (the bench checks each
is a 200) and was timed."""

from __future__ import annotations

import pytest

from app.bench import dashboard

pytestmark = pytest.mark.e2e


def test_every_page_is_read_and_timed() -> None:
    rows = dashboard.run([2_000], 1, json_path=None).rows
    assert {row["page"] for row in rows} == set(dashboard.PAGES)
    assert all(row["p50 ms"] > 0 for row in rows)
