"""`notify bench broadcast`, `fanout` and `history` in a small smoke mode, so that they
cannot rot. No figure is asserted (a benchmark measures); only that they run, reach
everyone and that progress was consistent."""

from __future__ import annotations

import pytest

from app.bench import broadcast, fanout, history

pytestmark = pytest.mark.e2e


def test_every_member_is_reached_once_per_broadcast_in_one_lane_and_in_two() -> None:
    rows = broadcast.run(2_000, chunk=500, pages=5, repeat=2, json_path=None, lanes=[1, 2]).rows
    runs, medians = rows[:4], rows[4:]
    assert [row["lanes"] for row in runs] == [1, 1, 2, 2]
    for row in runs:
        assert (row["members"], row["each member once"], row["progress ok"]) == (2_000, True, True)
        assert row["postgresql us/notification"] > 0
    assert runs[-1]["history pages"] == 5
    assert [row["lanes"] for row in medians] == [1, 2]
    assert all(row["median notifications/s"] > 0 for row in medians)


def test_every_variant_of_the_chunk_is_timed() -> None:
    rows = fanout.run(2_000, chunk=500, rounds=2, reuse=False, json_path=None).rows
    names = [row["variant"] for row in rows]
    assert names[0] == "as is" and "without the patient foreign key" in names
    assert all(row["backend CPU ms p50"] > 0 for row in rows[:-1])


def test_every_history_page_is_read() -> None:
    rows = history.run(2_000, requests=5, json_path=None).rows
    assert len(rows) == 9  # group 4, patient 3, staff 1, event 1
    assert any(row["page"].startswith("staff:") for row in rows)
    assert all(row["p99 ms"] > 0 for row in rows)
