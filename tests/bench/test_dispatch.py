"""`notify bench dispatch` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that nothing was lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.bench import dispatch

pytestmark = pytest.mark.e2e


def test_sends_everything_and_writes_its_figures(tmp_path: Path) -> None:
    result = dispatch.run([300], [1], concurrency=20, batch=100, json_path=tmp_path / "d.json")
    [row] = result.rows
    assert row["sent"] == 300 and row["other states"] == {}
    assert (tmp_path / "d.json").exists()


def test_whatsapp_and_sms_mixes_go_out_on_their_channel() -> None:
    result = dispatch.run(
        [200], [1], concurrency=20, batch=100, json_path=None, mixes=["sms", "whatsapp"]
    )
    assert [(r["mix"], r["sent"], r["other states"], r["attempts"]) for r in result.rows] == [
        ("sms", 200, {}, {"sms sent": 200}),
        ("whatsapp", 200, {}, {"whatsapp sent": 200}),
    ]


def test_a_history_stays_apart_and_the_runs_compare(tmp_path: Path) -> None:
    """An empty table and one with 2,000 older notifications in one run: the history
    neither counts as sent nor is sent again, and a table compares the two."""
    result = dispatch.run(
        [200],
        [1],
        concurrency=20,
        batch=100,
        json_path=tmp_path / "d.json",
        mixes=["sms"],
        histories=[0, 2000],
        reuse_history=True,
    )
    assert [(r["history"], r["sent"], r["other states"], r["attempts"]) for r in result.rows] == [
        (0, 200, {}, {"sms sent": 200}),
        (2000, 200, {}, {"sms sent": 200}),
    ]
    [comparison] = json.loads((tmp_path / "d.json").read_text())["comparisons"].values()
    assert [row["history"] for row in comparison] == [0, 2000]
    assert comparison[0]["us/msg pg vs 0"] == 1.0
