"""CHT's outgoing deny rules and the gateway phones' own numbers, on every channel."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.config import Settings
from app.delivery.policy import deny_rule
from app.gateways import service as gateway_service
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import due, make_dispatcher, patient_with, reload, settings_for


def settings(**values: Any) -> Settings:
    return Settings(**values)


class TestDenyRule:
    def test_no_rule_denies_nothing(self) -> None:
        assert deny_rule("+8801711000001", settings(), frozenset()) is None

    def test_a_prefix_of_the_list_denies_case_insensitively(self) -> None:
        s = settings(outgoing_deny_list="+880171, VODA")
        assert deny_rule("+8801711000001", s, frozenset()) == "OUTGOING_DENY_LIST (+880171)"
        assert deny_rule("Vodafone", s, frozenset()) == "OUTGOING_DENY_LIST (VODA)"
        assert deny_rule("+8801811000001", s, frozenset()) is None

    def test_fewer_digits_than_the_minimum_deny(self) -> None:
        s = settings(outgoing_deny_shorter_than=7)
        assert deny_rule("+16505", s, frozenset()) == "OUTGOING_DENY_SHORTER_THAN (7 digits)"
        assert deny_rule("+1650555", s, frozenset()) is None

    def test_letters_deny_when_the_rule_is_on(self) -> None:
        assert deny_rule("+8801ABC", settings(), frozenset()) is None
        on = settings(outgoing_deny_with_alphas=True)
        assert deny_rule("+8801ABC", on, frozenset()) == "OUTGOING_DENY_WITH_ALPHAS"
        assert deny_rule("+8801711000001", on, frozenset()) is None

    def test_a_gateways_own_number_is_denied(self) -> None:
        rule = deny_rule("+8801711000001", settings(), frozenset({"+8801711000001"}))
        assert rule == "the number of a gateway phone"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"outgoing_deny_list": "+8801711"}, "OUTGOING_DENY_LIST (+8801711)"),
        ({"outgoing_deny_shorter_than": 15}, "OUTGOING_DENY_SHORTER_THAN (15 digits)"),
        ({}, "the number of a gateway phone"),
    ],
)
async def test_the_dispatcher_denies_before_any_attempt_on_every_channel(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
    overrides: dict[str, Any],
    rule: str,
) -> None:
    s = settings_for(fakes, **overrides)
    dispatcher = make_dispatcher(
        s, db_sessionmaker, redis, channel_registry.build_channels(s, http)
    )
    patient = await patient_with(db_session, 7, imo="subscribed")
    if not overrides:
        await gateway_service.create_gateway(db_session, "phone-x", "BD", patient.mobile_e164)
    notification = await due(db_session, patient)
    await dispatcher.dispatch_once()
    fresh, attempts = await reload(db_session, notification)
    assert fresh.state == "denied"
    assert fresh.failure_reason == f"recipient denied by {rule}"
    assert attempts == []
