from __future__ import annotations

import pytest

from app import phone


class TestToE164:
    @pytest.mark.parametrize(
        ("number", "country", "expected"),
        [
            ("01711000001", "BD", "+8801711000001"),
            ("01711-000 001", "bd", "+8801711000001"),
            ("+8801711000001", "BD", "+8801711000001"),
            ("+8801711000001", "US", "+8801711000001"),
            ("00 880 1711 000001", "DE", "+8801711000001"),
            ("(212) 555-0123", "US", "+12125550123"),
            ("029660001", "BD", "+88029660001"),
        ],
    )
    def test_valid(self, number: str, country: str, expected: str) -> None:
        assert phone.to_e164(number, country) == expected

    @pytest.mark.parametrize("number", ["", "abc", "12345", "+880", "0171100000123456789"])
    def test_invalid(self, number: str) -> None:
        with pytest.raises(phone.InvalidPhoneNumber):
            phone.to_e164(number, "BD")


class TestCountries:
    @pytest.mark.parametrize(("country", "known"), [("BD", True), ("bd", True), ("XX", False)])
    def test_known(self, country: str, known: bool) -> None:
        assert phone.is_known_country(country) is known

    def test_zones_of_a_country(self) -> None:
        assert phone.country_time_zones("fr") == ("Europe/Paris",)
        assert "America/Chicago" in phone.country_time_zones("US")
        assert phone.country_time_zones("XX") == ()


class TestTimeZones:
    @pytest.mark.parametrize(
        ("name", "valid"),
        [
            ("Asia/Dhaka", True),
            ("UTC", True),
            ("Asia/Calcutta", True),  # a link, but loadable
            ("asia/dhaka", False),
            ("Mars/Olympus", False),
            ("../../etc/passwd", False),
            ("", False),
            ("Factory", False),
        ],
    )
    def test_valid(self, name: str, valid: bool) -> None:
        assert phone.is_valid_time_zone(name) is valid


class TestDefaultTimeZone:
    def test_programme_country(self) -> None:
        assert phone.default_time_zone("bd", []) == "Asia/Dhaka"

    def test_country_with_one_zone(self) -> None:
        assert phone.default_time_zone("FR", []) == "Europe/Paris"

    def test_numbers_tell_the_zone_of_a_wide_country(self) -> None:
        assert phone.default_time_zone("US", ["+12125550123"]) == "America/New_York"

    def test_numbers_that_disagree_tell_nothing(self) -> None:
        assert phone.default_time_zone("US", ["+12125550123", "+13105550123"]) is None

    def test_a_number_from_abroad_tells_nothing(self) -> None:
        assert phone.default_time_zone("US", ["+8801711000001"]) is None

    def test_wide_country_without_numbers(self) -> None:
        assert phone.default_time_zone("US", []) is None
