"""`notify bench switch` in a small mode: a pause stops sending within the batches in
flight, and the resume sends the rest, each once. (The figures are the benchmark's.)"""

from __future__ import annotations

import pytest

from app.bench import switch

pytestmark = pytest.mark.e2e


def test_pause_stops_sending_and_resume_sends_the_rest_once() -> None:
    [row] = switch.run([1000], [1], batch=100, pause_at=0.3, json_path=None).rows
    # Sending stopped: what the pause found in flight went out, the rest was held...
    assert row["held while paused"] > 0
    assert row["sent before pause"] + row["sent after pause"] + row["held while paused"] == 1000
    # ...no more than the batches in flight (two dispatch loops of 100)...
    assert row["sent after pause"] <= 200
    # ...and after the resume every reminder went out exactly once.
    assert (row["sent in all"], row["sent twice"], row["lost"]) == (1000, 0, 0)
    assert row["final states"] == {"sent": 1000}
