"""Each benchmark in a small smoke mode, so that they cannot rot. No figure is asserted:
a benchmark measures; the suite only checks that it runs and that nothing was lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bench import callbacks, dispatch, schedule, switch

pytestmark = pytest.mark.e2e


def test_dispatch(tmp_path: Path) -> None:
    result = dispatch.run([300], [1], concurrency=20, batch=100, json_path=tmp_path / "d.json")
    [row] = result.rows
    assert row["sent"] == 300 and row["other states"] == {}
    assert (tmp_path / "d.json").exists()


def test_callbacks() -> None:
    [row] = callbacks.run([300], concurrency=16, json_path=None).rows
    assert (row["non-2xx"], row["lost"]) == (0, 0)


def test_schedule() -> None:
    rows = schedule.run([200], concurrency=8, batch=100, json_path=None).rows
    assert [(r["items"], r["non-2xx"], r["stored"]) for r in rows] == [(200, 0, 200)] * 2


def test_switch_pause_stops_sending_and_resume_sends_the_rest_once() -> None:
    [row] = switch.run([1000], [1], batch=100, pause_at=0.3, json_path=None).rows
    # Sending stopped: what the pause found in flight went out, the rest was held...
    assert row["held while paused"] > 0
    assert row["sent before pause"] + row["sent after pause"] + row["held while paused"] == 1000
    # ...no more than the batches in flight (two dispatch loops of 100)...
    assert row["sent after pause"] <= 200
    # ...and after the resume every reminder went out exactly once.
    assert (row["sent in all"], row["sent twice"], row["lost"]) == (1000, 0, 0)
    assert row["final states"] == {"sent": 1000}
