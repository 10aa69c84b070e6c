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


class TestStaffRecipients:
    """A staff member's notification: by email only, denied (never attempted) without a
    usable address; a patient's consent and opt-outs do not apply."""

    STAFF = {
        "patient_id": None,
        "staff_id": "nurse-7",
        "mobile_e164": None,
        "email": "nasrin@clinic.example.org",
        "reminder_consent": "",
        "imo_status": None,
        "country": "",
    }

    def staff(self, available: set[str] = AVAILABLE, **overrides: Any) -> Outcome | SendOn:
        return first(available, **{**self.STAFF, **overrides})

    def test_with_an_address_goes_by_email_whatever_the_chains(self) -> None:
        # BD's chain is Imo then SMS: staff are reached by email all the same.
        assert self.staff(country="BD") == SendOn(["email"], 0)

    def test_without_an_address_is_denied_never_attempted(self) -> None:
        for missing in (None, ""):
            step = self.staff(email=missing)
            assert isinstance(step, Outcome)
            assert step.state is S.DENIED
            assert step.failure_reason == policy.STAFF_NO_EMAIL

    def test_a_blocked_address_is_denied_with_the_reason(self) -> None:
        step = self.staff(email_blocked="hard bounce: 5.1.1")
        assert isinstance(step, Outcome)
        assert step.state is S.DENIED
        assert step.failure_reason == "email address blocked: hard bounce: 5.1.1"

    def test_patient_consent_and_opt_outs_do_not_apply(self) -> None:
        step = self.staff(reminder_consent="denied", opted_out_channels=["*"])
        assert step == SendOn(["email"], 0)

    def test_outside_the_window_of_their_time_zone_it_waits(self) -> None:
        # 06:00 UTC is 00:00 in Mexico City: put off to 08:00 there (14:00 UTC).
        step = self.staff(time_zone="America/Mexico_City")
        assert isinstance(step, Outcome)
        assert step.state is S.SCHEDULED
        assert step.due_at is not None and step.due_at.hour == 14

    def test_email_not_configured_fails_with_why(self) -> None:
        step = self.staff({"imo", "sms"})
        assert isinstance(step, Outcome)
        assert step.state is S.FAILED
        assert step.failure_reason == policy.STAFF_NO_EMAIL_CHANNEL

    def test_an_expired_one_ends_expired_first(self) -> None:
        step = self.staff(expires_at=NOW)
        assert isinstance(step, Outcome) and step.state is S.EXPIRED
