"""Fixtures of the delivery tests: `fakes`, the URLs of the in-process fake Imo and
Twilio (tests/conftest.py), for `settings_for` in test_dispatcher.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.fake_servers import FakeImo, FakeTwilio


@dataclass
class Fakes:
    imo_url: str
    twilio_url: str


@pytest.fixture
def fakes(fake_imo: FakeImo, fake_twilio: FakeTwilio) -> Fakes:
    return Fakes(fake_imo.url, fake_twilio.url)
