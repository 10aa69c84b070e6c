"""The operations endpoints: readiness and what it tells about the channels."""

from __future__ import annotations

import httpx
import pytest

from app.config import get_settings
from tests.factories import api, api_app

__all__ = ["api", "api_app"]

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
