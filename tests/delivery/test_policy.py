import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from app.channels.base import PermanentChannelError, TransientChannelError
from app.config import Settings
from app.delivery import policy
from app.delivery.types import ClaimedNotification, Outcome, SendOn
from app.notifications.window import MessagingWindow
from app.states import NotificationState as S

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # 12:00 in Dhaka
WINDOW = MessagingWindow(time(8, 0), time(20, 0))
SETTINGS = Settings(
    app_env="test", retry_base_seconds=30, retry_max_seconds=900, retry_max_attempts=3
)
ALL = {"imo", "sms"}


def claimed(**overrides: Any) -> ClaimedNotification:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "patient_id": "p-1",
        "purpose": "appointment_reminder",
        "title": "t",
        "body": "b",
        "locale": "bn-BD",
        "expires_at": NOW + timedelta(days=4),
        "channel_chain": None,
        "channel_index": 0,
        "retry_count": 0,
        "full_name": "Rahim",
        "mobile_e164": "+8801711000003",
        "country": "BD",
        "time_zone": "Asia/Dhaka",
        "reminder_consent": "granted",
        "imo_status": "subscribed",
    }
    values.update(overrides)
    return ClaimedNotification(**values)


def first(n: ClaimedNotification, available: set[str] = ALL) -> Outcome | SendOn:
    return policy.first_step(n, now=NOW, window=WINDOW, settings=SETTINGS, available=available)


REMINDER = "appointment_reminder"


class TestChannelChain:
    def test_bangladesh_subscribed_goes_imo_then_sms(self) -> None:
        assert policy.channel_chain(SETTINGS, "BD", REMINDER, "subscribed", ALL) == ["imo", "sms"]

    @pytest.mark.parametrize("status", [None, "invited", "not_subscribed", "no_imo_account"])
    def test_bangladesh_unsubscribed_goes_sms(self, status: str | None) -> None:
        assert policy.channel_chain(SETTINGS, "BD", REMINDER, status, ALL) == ["sms"]

    def test_elsewhere_sms_and_unconfigured_channels_are_skipped(self) -> None:
        assert policy.channel_chain(SETTINGS, "KE", REMINDER, None, ALL) == ["sms"]
        assert policy.channel_chain(SETTINGS, "IN", REMINDER, None, ALL) == ["sms"]
        assert policy.channel_chain(SETTINGS, "BD", REMINDER, "subscribed", {"sms"}) == ["sms"]
        whatsapp = ALL | {"whatsapp"}
        assert policy.channel_chain(SETTINGS, "IN", REMINDER, None, whatsapp) == [
            "whatsapp",
            "sms",
        ]


class TestChainsByPurpose:
    SETTINGS = Settings(
        app_env="test",
        channel_chains={
            "BD": ["imo", "sms"],
            "BD/missed_visit": ["sms"],
            "*/missed_visit": ["whatsapp"],
            "*": ["sms", "whatsapp"],
        },
    )

    @pytest.mark.parametrize(
        ("country", "purpose", "chain"),
        [
            ("BD", "missed_visit", ["sms"]),  # country and purpose
            ("bd", "missed_visit", ["sms"]),
            ("BD", REMINDER, ["imo", "sms"]),  # the country's
            ("KE", "missed_visit", ["whatsapp"]),  # any country, this purpose
            ("KE", REMINDER, ["sms", "whatsapp"]),  # everything else
        ],
    )
    def test_the_most_specific_key_wins(self, country: str, purpose: str, chain: list[str]) -> None:
        assert self.SETTINGS.chain_for(country, purpose) == chain

    def test_without_a_star_key_sms_alone(self) -> None:
        assert Settings(app_env="test", channel_chains={"BD": ["imo"]}).chain_for("IN", "x") == [
            "sms"
        ]

    def test_first_step_uses_the_purpose(self) -> None:
        step = policy.first_step(
            claimed(purpose="missed_visit"),
            now=NOW,
            window=WINDOW,
            settings=self.SETTINGS,
            available=ALL,
        )
        assert step == SendOn(["sms"], 0)


class TestChainValidation:
    @pytest.mark.parametrize(
        ("chains", "complaint"),
        [
            ({"BD": ["imo", "telegram"]}, r"'BD' names unknown channels \['telegram'\]"),
            ({"BD/missed_visit": ["sms", "sms"]}, "names a channel twice"),
            ({"Bangladesh": ["sms"]}, "key 'Bangladesh' is not COUNTRY"),
            ({"BD/Missed": ["sms"]}, "key 'BD/Missed' is not COUNTRY"),
        ],
    )
    def test_a_bad_chain_stops_start_up(self, chains: dict[str, list[str]], complaint: str) -> None:
        with pytest.raises(ValueError, match=complaint):
            Settings(app_env="test", channel_chains=chains)

    def test_unconfigured_steps_are_reported_by_key(self) -> None:
        report = policy.chain_report(
            Settings(
                app_env="test",
                channel_chains={"BD": ["imo", "sms"], "IN": ["whatsapp", "sms"], "*": ["sms"]},
            ),
            configured={"sms"},
        )
        assert report.as_json() == {
            "configured": ["sms"],
            "unconfigured": ["imo", "whatsapp"],
            "unconfigured_steps": {"BD": ["imo"], "IN": ["whatsapp"]},
        }


class TestFirstStep:
    def test_sends_on_the_first_channel(self) -> None:
        assert first(claimed()) == SendOn(["imo", "sms"], 0)

    def test_refuses_without_consent_or_mobile(self) -> None:
        assert first(claimed(reminder_consent="denied")) == Outcome(
            S.DENIED, failure_reason="no reminder consent"
        )
        assert first(claimed(mobile_e164=None)) == Outcome(
            S.DENIED, failure_reason="no mobile number"
        )

    def test_expired_is_never_sent_late(self) -> None:
        outcome = first(claimed(expires_at=NOW))
        assert isinstance(outcome, Outcome) and outcome.state is S.EXPIRED

    def test_outside_the_window_waits_for_the_next_opening(self) -> None:
        outcome = first(claimed(time_zone="America/New_York"))  # 01:00 there
        assert isinstance(outcome, Outcome)
        assert outcome.state is S.SCHEDULED
        assert outcome.due_at == datetime(2026, 11, 23, 13, 0, tzinfo=UTC)

    def test_a_stored_chain_is_resumed_skipping_imo_once_downgraded(self) -> None:
        step = first(claimed(channel_chain=["imo", "sms"], imo_status="no_imo_account"))
        assert step == SendOn(["imo", "sms"], 1)

    def test_no_channel_fails(self) -> None:
        outcome = first(claimed(), available=set())
        assert isinstance(outcome, Outcome) and outcome.state is S.FAILED


def after(n: ClaimedNotification, step: SendOn, error: Exception) -> Outcome | SendOn:
    return policy.after_error(n, step, error, now=NOW, window=WINDOW, settings=SETTINGS)


class TestAfterError:
    def test_any_imo_error_falls_back_at_once(self) -> None:
        step = SendOn(["imo", "sms"], 0)
        for error in (
            TransientChannelError("slow", code="timeout"),
            PermanentChannelError("gone", code="nonexistent_user"),
            PermanentChannelError("?", unexpected=True, code="unexpected"),
        ):
            assert after(claimed(), step, error) == SendOn(["imo", "sms"], 1)

    def test_invalid_number_is_denied(self) -> None:
        error = PermanentChannelError("bad", code="21211", recipient_invalid=True)
        outcome = after(claimed(), SendOn(["sms"], 0), error)
        assert isinstance(outcome, Outcome)
        assert outcome.state is S.DENIED
        assert outcome.failure_reason is not None and "21211" in outcome.failure_reason

    def test_transient_sms_error_retries_later_with_backoff(self) -> None:
        outcome = after(claimed(), SendOn(["sms"], 0), TransientChannelError("x", code="http_5xx"))
        assert isinstance(outcome, Outcome)
        assert outcome.state is S.SCHEDULED
        assert outcome.retry_count == 1
        assert outcome.due_at is not None
        assert NOW + timedelta(seconds=15) <= outcome.due_at <= NOW + timedelta(seconds=30)

    def test_retry_after_is_honoured(self) -> None:
        error = TransientChannelError("x", code="429", retry_after=600)
        outcome = after(claimed(), SendOn(["sms"], 0), error)
        assert isinstance(outcome, Outcome) and outcome.due_at is not None
        assert outcome.due_at >= NOW + timedelta(seconds=600)

    def test_retries_run_out_then_fail_with_the_reason(self) -> None:
        error = TransientChannelError("x", code="http_5xx")
        outcome = after(claimed(retry_count=3), SendOn(["sms"], 0), error)
        assert isinstance(outcome, Outcome)
        assert outcome.state is S.FAILED
        assert outcome.failure_reason == "sms: http_5xx: x"

    def test_a_success_that_could_not_be_read_is_sent_never_resent(self) -> None:
        error = PermanentChannelError("no sid", code="unexpected", unexpected=True, maybe_sent=True)
        outcome = after(claimed(), SendOn(["whatsapp", "sms"], 0), error)
        assert isinstance(outcome, Outcome)
        assert (outcome.state, outcome.channel_index, outcome.sent_at) == (S.SENT, 0, NOW)
        assert outcome.failure_reason == "unconfirmed: whatsapp: unexpected: no sid"

    def test_permanent_error_on_the_last_channel_fails(self) -> None:
        error = PermanentChannelError("unsubscribed", code="21610")
        outcome = after(claimed(), SendOn(["imo", "sms"], 1), error)
        assert isinstance(outcome, Outcome) and outcome.state is S.FAILED

    def test_imo_downgrades(self) -> None:
        assert policy.imo_downgrade("imo", PermanentChannelError("x", code="not_subscribed")) == (
            "not_subscribed"
        )
        assert policy.imo_downgrade("imo", PermanentChannelError("x", code="nonexistent_user")) == (
            "no_imo_account"
        )
        assert policy.imo_downgrade("imo", TransientChannelError("x", code="timeout")) is None
        assert (
            policy.imo_downgrade("sms", PermanentChannelError("x", code="not_subscribed")) is None
        )


class TestBackoff:
    def test_capped_and_jittered(self) -> None:
        delays = [policy.backoff(n, SETTINGS, None).total_seconds() for n in range(12)]
        assert all(15 <= d <= 900 for d in delays)
        assert max(delays[8:]) <= 900


class TestAfterDeliveryFailure:
    def test_falls_to_the_next_channel_or_fails(self) -> None:
        moved = policy.after_delivery_failure("subscribed", SendOn(["sms", "imo"], 0), NOW, "x")
        assert moved.state is S.SCHEDULED and moved.channel_index == 1 and moved.due_at == NOW
        last = policy.after_delivery_failure("subscribed", SendOn(["imo", "sms"], 1), NOW, "x")
        assert last.state is S.FAILED and last.failure_reason == "sms: x"


class TestOptOuts:
    def test_opted_out_everywhere_is_denied_without_a_channel(self) -> None:
        assert first(claimed(opted_out_channels=["*"])) == Outcome(
            S.DENIED, failure_reason="opted out"
        )

    def test_an_opted_out_channel_is_skipped(self) -> None:
        outcome = first(claimed(opted_out_channels=["imo"]))
        assert outcome == SendOn(["imo", "sms"], 1)

    def test_opted_out_of_every_channel_left_is_denied_not_failed(self) -> None:
        outcome = first(claimed(imo_status=None, opted_out_channels=["sms"]))
        assert isinstance(outcome, Outcome)
        assert (outcome.state, outcome.failure_reason) == (S.DENIED, "opted out")

    def test_a_providers_opt_out_falls_back_or_denies(self) -> None:
        error = PermanentChannelError("unsubscribed", code="21610", opted_out=True)
        assert policy.provider_opt_out("sms", error) == "sms"
        assert policy.provider_opt_out("sms", PermanentChannelError("x", code="21211")) is None
        outcome = after(claimed(imo_status=None), SendOn(["sms"], 0), error)
        assert isinstance(outcome, Outcome)
        assert (outcome.state, outcome.failure_reason) == (S.DENIED, "opted out")
        error_on_imo = PermanentChannelError("unsubscribed", opted_out=True)
        assert after(claimed(), SendOn(["imo", "sms"], 0), error_on_imo) == SendOn(
            ["imo", "sms"], 1
        )
