"""Phone numbers: parsed with `phonenumbers`, stored and returned in E.164."""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from functools import cache
from importlib import resources

import phonenumbers
from phonenumbers import timezone as phone_timezone

# The programmes' own countries first; elsewhere a number's single time zone, if any.
COUNTRY_TIME_ZONES = {
    "BD": "Asia/Dhaka",
    "IN": "Asia/Kolkata",
    "ET": "Africa/Addis_Ababa",
    "LK": "Asia/Colombo",
    "NP": "Asia/Kathmandu",
    "PK": "Asia/Karachi",
    "NG": "Africa/Lagos",
    "KE": "Africa/Nairobi",
}


# The region of `to_e164` that reads international numbers only (+880..., 00880...).
INTERNATIONAL_ONLY = "ZZ"


class InvalidPhoneNumber(ValueError):
    pass


def to_e164(number: str, country: str) -> str:
    """National (read with `country`) or international number -> E.164.

    Raises InvalidPhoneNumber for anything that is not a valid number.
    """
    try:
        parsed = phonenumbers.parse(number, country.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number ({exc.error_type!r})") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"not a valid number for {country.upper()}")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def is_known_country(country: str) -> bool:
    return country.upper() in phonenumbers.SUPPORTED_REGIONS


@cache
def valid_time_zones() -> frozenset[str]:
    """Every IANA zone name zoneinfo can load (tzdata is a dependency)."""
    return frozenset(zoneinfo.available_timezones() - {"Factory", "localtime"})


def is_valid_time_zone(name: str) -> bool:
    return name in valid_time_zones()


@cache
def _zones_by_country() -> dict[str, tuple[str, ...]]:
    """ISO 3166 alpha-2 -> its zones, from the tz database's own zone.tab."""
    zones: dict[str, list[str]] = defaultdict(list)
    try:
        table = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover - tzdata is a dependency
        return {}
    for line in table.splitlines():
        if line and not line.startswith("#"):
            country, _, zone, *_ = line.split("\t")
            zones[country].append(zone)
    return {country: tuple(names) for country, names in zones.items()}


def country_time_zones(country: str) -> tuple[str, ...]:
    """The tz database's zones of `country` (empty for an unknown one)."""
    return _zones_by_country().get(country.upper(), ())


def default_time_zone(country: str, e164_numbers: list[str]) -> str | None:
    """The zone to assume for a patient who gave none, or None if it cannot be told.

    In order: the programmes' own choice for the country; the country's only zone; the
    one zone all the patient's numbers in that country belong to (a US number's area
    code, say). A number from abroad says nothing about where the patient lives.
    """
    country = country.upper()
    if country in COUNTRY_TIME_ZONES:
        return COUNTRY_TIME_ZONES[country]
    zones_of_country = country_time_zones(country)
    if len(zones_of_country) == 1:
        return zones_of_country[0]
    zones: set[str] = set()
    for number in e164_numbers:
        parsed = phonenumbers.parse(number)
        if phonenumbers.region_code_for_number(parsed) == country:
            zones.update(phone_timezone.time_zones_for_number(parsed))
    zones.discard("Etc/Unknown")
    if len(zones) == 1:
        zone = zones.pop()
        return zone if is_valid_time_zone(zone) else None
    return None
