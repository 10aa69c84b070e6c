"""The invitation rules as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from app.channels.base import PermanentChannelError, TransientChannelError
from app.imo import rules
from app.notifications.window import MessagingWindow

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # 12:00 in Dhaka (UTC+6)
BEFORE = rules.reinvite_before(NOW, 180)
WINDOW = MessagingWindow(time(8), time(20))

# (status, last invited, candidate?): `test_repository` holds the SQL to the same cases.
CANDIDATE_CASES = [
    (None, None, True),
    ("subscribed", None, False),
    ("subscribed", BEFORE - timedelta(days=400), False),
    ("invited", BEFORE - timedelta(seconds=1), True),
    ("invited", BEFORE + timedelta(seconds=1), False),
    ("not_subscribed", BEFORE - timedelta(days=1), True),
    ("not_subscribed", NOW - timedelta(days=1), False),
    ("no_imo_account", BEFORE - timedelta(days=1), True),
    ("no_imo_account", NOW, False),
    # Downgraded by a failed notification, never invited: invite.
    ("not_subscribed", None, True),
]


class TestReinviteBefore:
    def test_is_that_many_days_back(self) -> None:
        assert rules.reinvite_before(NOW, 180) == NOW - timedelta(days=180)


class TestIsCandidate:
    @pytest.mark.parametrize(("status", "last_invited_at", "expected"), CANDIDATE_CASES)
    def test_case(
        self, status: str | None, last_invited_at: datetime | None, expected: bool
    ) -> None:
        assert rules.is_candidate(status, last_invited_at, BEFORE) is expected


class TestAnswerOf:
    @pytest.mark.parametrize("status", sorted(rules.AUTHORIZATION_ANSWERS))
    def test_known_statuses_are_their_own_outcome(self, status: str) -> None:
        assert rules.answer_of("p-1", status) == rules.Answer("p-1", status)

    def test_an_unknown_status_is_unexpected(self) -> None:
        assert rules.answer_of("p-1", "blocked").outcome == "unexpected"

    def test_a_transient_error_keeps_its_retry_after(self) -> None:
        error = TransientChannelError("429", code="429", retry_after=2.5)
        assert rules.answer_of("p-1", error) == rules.Answer("p-1", "transient", 2.5)

    def test_a_permanent_error_or_a_bug_is_unexpected(self) -> None:
        permanent = PermanentChannelError("odd", unexpected=True, code="unexpected")
        assert rules.answer_of("p-1", permanent).outcome == "unexpected"
        assert rules.answer_of("p-1", KeyError("post_id")).outcome == "unexpected"


class TestWindows:
    def test_open_zones_are_those_in_their_daytime(self) -> None:
        zones = ["Asia/Dhaka", "America/New_York", "Europe/London"]
        # 12:00 in Dhaka, 01:00 in New York, 06:00 in London.
        assert rules.open_zones(WINDOW, NOW, zones) == ["Asia/Dhaka"]

    def test_resume_at_is_the_earliest_opening(self) -> None:
        later = rules.resume_at(WINDOW, NOW, {"America/New_York": None, "Europe/London": None})
        assert later == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # 08:00 in London

    def test_resume_at_respects_a_not_before(self) -> None:
        not_before = NOW + timedelta(minutes=5)
        assert rules.resume_at(WINDOW, NOW, {"Asia/Dhaka": not_before}) == not_before

    def test_resume_at_with_no_zones_is_none(self) -> None:
        assert rules.resume_at(WINDOW, NOW, {}) is None


class TestAcceptLabel:
    def test_bengali_and_fallback(self) -> None:
        assert rules.accept_label("bn-BD") == rules.ACCEPT_LABELS["bn"]
        assert rules.accept_label("fr-FR") == rules.DEFAULT_ACCEPT_LABEL
