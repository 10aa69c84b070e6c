"""`notify bench webhooks` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that every event reached the sink once, through
the sink's refusals."""

from __future__ import annotations

import pytest

from app.bench import webhooks

pytestmark = pytest.mark.e2e


def test_every_event_reaches_the_sink_once() -> None:
    [row] = webhooks.run(200, fail_rate=0.2, batch=50, json_path=None).rows
    assert (row["unique ids at sink"], row["not delivered"]) == (200, 0)
    assert row["sink 500s"] > 0  # the retries were exercised
