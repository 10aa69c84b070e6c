"""`notify bench broadcast` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs, reaches everyone and its progress
was consistent."""

from __future__ import annotations

import pytest

from app.bench import broadcast

pytestmark = pytest.mark.e2e


def test_every_member_is_reached() -> None:
    [row] = broadcast.run(2_000, chunk=500, pages=5, json_path=None).rows
    assert (row["members"], row["notifications table"], row["progress ok"]) == (2_000, 2_000, True)
    assert row["history pages"] == 5
