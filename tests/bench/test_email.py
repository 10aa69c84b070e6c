"""`notify bench email` in a small smoke mode, so that it cannot rot. No figure is
asserted (a benchmark measures); only that it runs and that every email was taken."""

from __future__ import annotations

import pytest

from app.bench import email

pytestmark = pytest.mark.e2e


def test_every_email_is_taken_by_the_smtp_server() -> None:
    [row] = email.run(100, [2], 1, json_path=None).rows
    assert row["failures"] == 0
    assert row["emails/s (median)"] > 0 and row["bare aiosmtplib/s"] > 0
