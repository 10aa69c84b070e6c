"""The operations endpoints: readiness and what it tells about the channels."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from app.config import Settings, get_settings
from app.delivery.dispatcher import check_chains

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestReadiness:
    async def test_ready_lists_configured_and_unconfigured_channels(
        self, api: httpx.AsyncClient
    ) -> None:
        answer = await api.get("/readyz")
        assert answer.status_code == 200
        body = answer.json()
        assert body["status"] == "ok"
        assert body["database"] == body["redis"] == "ok"
        # The test settings have no provider credentials: every chain step is unconfigured,
        # and said so rather than skipped unseen.
        chains = get_settings().channel_chains
        assert body["channels"]["configured"] == []
        assert body["channels"]["unconfigured_steps"] == chains
        assert set(body["channels"]["unconfigured"]) == {"imo", "sms", "whatsapp"}


def sms_only(**overrides: Any) -> Settings:
    """Settings with Twilio SMS configured and no other channel."""
    return Settings(
        app_env="test",
        twilio_account_sid="AC" + "1" * 32,
        twilio_sms_from="+15005550006",
        **overrides,
    )


class TestStartUpCheck:
    async def test_unconfigured_steps_are_logged_once_by_name(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = sms_only(channel_chains={"BD": ["imo", "sms"], "*": ["sms"]})
        with caplog.at_level(logging.WARNING, logger="app.delivery.dispatcher"):
            report = check_chains(settings)
        assert report.unconfigured_steps == {"BD": ["imo"]}
        [record] = [r for r in caplog.records if "not configured" in r.getMessage()]
        assert record.__dict__["steps"] == {"BD": ["imo"]}

    async def test_nothing_is_logged_when_every_step_is_configured(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = sms_only(channel_chains={"*": ["sms"]})
        with caplog.at_level(logging.WARNING, logger="app.delivery.dispatcher"):
            assert check_chains(settings).unconfigured == []
        assert not caplog.records
