"""`notify bench schedule` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that nothing was lost."""

from __future__ import annotations

import pytest

from app.bench import schedule

pytestmark = pytest.mark.e2e


def test_every_item_is_stored() -> None:
    rows = schedule.run([200], concurrency=8, batch=100, json_path=None).rows
    assert [(r["items"], r["non-2xx"], r["stored"]) for r in rows] == [(200, 0, 200)] * 2
