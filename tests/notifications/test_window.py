from datetime import UTC, date, datetime, time

from app.notifications.window import MessagingWindow
from tests.clock import zone_at_local_hour

WINDOW = MessagingWindow(time(8, 0), time(20, 0))
DHAKA = "Asia/Dhaka"  # UTC+6


class TestContains:
    def test_inside_and_outside_in_local_time(self) -> None:
        assert WINDOW.contains(datetime(2026, 11, 23, 4, 0, tzinfo=UTC), DHAKA)  # 10:00
        assert not WINDOW.contains(datetime(2026, 11, 23, 1, 0, tzinfo=UTC), DHAKA)  # 07:00
        assert not WINDOW.contains(datetime(2026, 11, 23, 14, 0, tzinfo=UTC), DHAKA)  # 20:00

    def test_zone_helper_gives_the_local_hour(self) -> None:
        now = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
        zone = zone_at_local_hour(2, now)
        assert not WINDOW.contains(now, zone)
        assert WINDOW.contains(now, zone_at_local_hour(12, now))


class TestNextMoment:
    def test_open_window_is_now(self) -> None:
        moment = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
        assert WINDOW.next_moment(moment, DHAKA) == moment

    def test_before_opening_waits_for_the_same_morning(self) -> None:
        moment = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)  # 06:30 local
        assert WINDOW.next_moment(moment, DHAKA) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

    def test_after_closing_waits_for_the_next_morning(self) -> None:
        moment = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 21:00 local
        assert WINDOW.next_moment(moment, DHAKA) == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)

    def test_daylight_saving_gap_lands_on_a_real_opening(self) -> None:
        # Europe/London springs forward on 2026-03-29; 08:00 local is 07:00 UTC.
        moment = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)
        assert WINDOW.next_moment(moment, "Europe/London") == datetime(
            2026, 3, 29, 7, 0, tzinfo=UTC
        )


class TestMomentOn:
    def test_future_day_is_its_opening(self) -> None:
        now = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
        assert WINDOW.moment_on(date(2026, 11, 30), DHAKA, now) == datetime(
            2026, 11, 30, 2, 0, tzinfo=UTC
        )

    def test_today_while_open_is_now(self) -> None:
        now = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
        assert WINDOW.moment_on(date(2026, 11, 23), DHAKA, now) == now

    def test_closed_day_is_none(self) -> None:
        now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 21:00 local
        assert WINDOW.moment_on(date(2026, 11, 23), DHAKA, now) is None
        assert WINDOW.moment_on(date(2026, 11, 22), DHAKA, now) is None
