"""The fake providers served from the test process (callbacks off), for tests that count
what they were sent; the fixtures `fake_imo` and `fake_twilio` (tests/conftest.py) hand
them out reset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.fakes.imo import FAKE_IMO_KEY, INVITE
from app.fakes.twilio import FAKE_TWILIO


@dataclass
class FakeImo:
    url: str
    app: web.Application

    def requests_per_phone(self) -> dict[str, int]:
        """`send_invite` requests the fake received, by phone."""
        return dict(self.app[FAKE_IMO_KEY].phones[INVITE])

    def configure(self, **changes: Any) -> None:
        self.app[FAKE_IMO_KEY].reconfigure(changes)

    def reset(self) -> None:
        """No fault, and nothing received."""
        self.configure(error_rate=0.0, garbage_rate=0.0, timeout_rate=0.0)
        self.app[FAKE_IMO_KEY].reset()


@dataclass
class FakeTwilio:
    url: str
    app: web.Application

    def messages_per_phone(self) -> dict[str, int]:
        """Messages the fake accepted, by recipient."""
        return dict(self.app[FAKE_TWILIO].to_counts)

    def reset(self) -> None:
        self.app[FAKE_TWILIO].to_counts.clear()
