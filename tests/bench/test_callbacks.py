"""`notify bench callbacks` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that nothing was lost."""

from __future__ import annotations

import pytest

from app.bench import callbacks

pytestmark = pytest.mark.e2e


def test_every_callback_is_answered_and_kept() -> None:
    [row] = callbacks.run([300], concurrency=16, json_path=None).rows
    assert (row["non-2xx"], row["lost"]) == (0, 0)


def test_on_a_history_every_callback_is_answered_and_kept() -> None:
    """The callbacks' attempts take the ids after the history's; only theirs count."""
    rows = callbacks.run([300], concurrency=16, json_path=None, histories=[0, 2000]).rows
    assert [(r["history"], r["non-2xx"], r["lost"]) for r in rows] == [(0, 0, 0), (2000, 0, 0)]
