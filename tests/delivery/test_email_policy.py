"""Who email reaches and when: the contact a chain's channels need, email first for the
purposes that prefer it, and the per-address check."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.delivery import policy
from app.delivery.types import Outcome, SendOn
from app.states import NotificationState as S
from tests.delivery.test_policy import NOW, WINDOW, claimed

EMAIL = "rahim@mail.example.org"
SETTINGS = Settings(
    app_env="test",
    channel_chains={"BD": ["imo", "sms"], "BD/appointment_reminder": ["email", "sms"]},
)
AVAILABLE = {"imo", "sms", "email"}


def first(available: set[str] = AVAILABLE, **overrides: Any) -> Outcome | SendOn:
    return policy.first_step(
        claimed(**overrides), now=NOW, window=WINDOW, settings=SETTINGS, available=available
    )


class TestConversationMessages:
    def test_a_patient_with_both_gets_email_first_then_their_chain(self) -> None:
        step = first(purpose="conversation", email=EMAIL)
        assert step == SendOn(["email", "imo", "sms"], 0)

    def test_without_an_address_the_phone_chain_as_before(self) -> None:
        assert first(purpose="conversation") == SendOn(["imo", "sms"], 0)

    def test_email_only_patient_is_reached_by_email(self) -> None:
        step = first(purpose="conversation", email=EMAIL, mobile_e164=None)
        assert step == SendOn(["email"], 0)

    def test_preference_is_per_purpose(self) -> None:
        settings = Settings(app_env="test", email_preferred_purposes=[])
        step = policy.first_step(
            claimed(purpose="conversation", email=EMAIL),
            now=NOW,
            window=WINDOW,
            settings=settings,
            available=AVAILABLE,
        )
        assert step == SendOn(["imo", "sms"], 0)

    def test_email_not_configured_is_skipped(self) -> None:
        assert first({"imo", "sms"}, purpose="conversation", email=EMAIL) == SendOn(
            ["imo", "sms"], 0
        )


class TestReminderChainsWithEmail:
    def test_email_where_the_chain_names_it(self) -> None:
        assert first(email=EMAIL) == SendOn(["email", "sms"], 0)

    def test_a_patient_without_an_address_skips_it(self) -> None:
        assert first() == SendOn(["sms"], 0)

    def test_neither_mobile_nor_address_is_denied(self) -> None:
        step = first(mobile_e164=None)
        assert isinstance(step, Outcome) and step.state is S.DENIED

    def test_email_only_patient_in_a_phone_chain_has_no_channel(self) -> None:
        step = first(mobile_e164=None, email=EMAIL, purpose="missed_visit")
        assert isinstance(step, Outcome) and step.state is S.FAILED


class TestPerAddressCheck:
    def test_a_blocked_address_is_never_attempted_and_the_chain_goes_on(self) -> None:
        step = first(email=EMAIL, email_blocked="hard bounce")
        assert step == SendOn(["sms"], 0)

    def test_a_blocked_address_and_nothing_else_is_denied_with_the_reason(self) -> None:
        step = first(email=EMAIL, email_blocked="hard bounce", mobile_e164=None)
        assert isinstance(step, Outcome)
        assert step.state is S.DENIED
        assert step.failure_reason == "email address blocked: hard bounce"

    def test_email_denial_names_the_reason(self) -> None:
        assert policy.email_denial(claimed(email=EMAIL)) is None
        assert policy.email_denial(claimed(email=None, email_blocked="x")) is None
        assert policy.email_denial(claimed(email=EMAIL, email_blocked="complaint")) == (
            "email address blocked: complaint"
        )
