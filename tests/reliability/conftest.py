"""Fixtures of the fault tests: a PostgreSQL and a Redis of their own, to break freely."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import embedded
from tests.stack import Services


@pytest.fixture(scope="module")
def own_services() -> Iterator[Services]:
    """An embedded PostgreSQL and Redis for this module alone: tests may stop, restart
    and flush them without touching the session's."""
    data_dir = Path(tempfile.mkdtemp(prefix="clinic-notify-faults-"))
    try:
        database_url = embedded.ensure_postgres(
            data_dir, "clinic_notify_faults", durable=False, fresh=True
        )
        redis_url = embedded.ensure_redis(data_dir)
        yield Services(database_url=database_url, redis_url=redis_url, data_dir=data_dir)
    finally:
        embedded.stop_all(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
