"""Each benchmark in a small smoke mode, so that they cannot rot. No figure is asserted:
a benchmark measures; the suite only checks that it runs and that nothing was lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bench import callbacks, dispatch, schedule

pytestmark = pytest.mark.e2e


def test_dispatch(tmp_path: Path) -> None:
    result = dispatch.run([300], [1], concurrency=20, batch=100, json_path=tmp_path / "d.json")
    [row] = result.rows
    assert row["sent"] == 300 and row["other states"] == {}
    assert (tmp_path / "d.json").exists()


def test_dispatch_whatsapp_and_sms_mixes() -> None:
    result = dispatch.run(
        [200], [1], concurrency=20, batch=100, json_path=None, mixes=["sms", "whatsapp"]
    )
    assert [(r["mix"], r["sent"], r["other states"], r["attempts"]) for r in result.rows] == [
        ("sms", 200, {}, {"sms sent": 200}),
        ("whatsapp", 200, {}, {"whatsapp sent": 200}),
    ]


def test_callbacks() -> None:
    [row] = callbacks.run([300], concurrency=16, json_path=None).rows
    assert (row["non-2xx"], row["lost"]) == (0, 0)


def test_schedule() -> None:
    rows = schedule.run([200], concurrency=8, batch=100, json_path=None).rows
    assert [(r["items"], r["non-2xx"], r["stored"]) for r in rows] == [(200, 0, 200)] * 2
