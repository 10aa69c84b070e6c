"""`notify bench callbacks` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that nothing was lost."""

from __future__ import annotations

import pytest

from app.bench import callbacks

pytestmark = pytest.mark.e2e


def test_every_callback_is_answered_and_kept() -> None:
    [row] = callbacks.run([300], concurrency=16, json_path=None).rows
    assert (row["non-2xx"], row["lost"]) == (0, 0)
