"""Switch scopes and which messages they hold: pure rules, no I/O.

A scope names what a switch covers: `all`, or one to three `key=value` parts joined by
commas, with keys `country` (ISO 3166 alpha-2), `channel` (any ChannelName) and
`purpose` (as the API's notifications name it), each at most once, in any order:
`country=IN`, `channel=whatsapp`, `country=IN,channel=whatsapp`,
`country=BD,purpose=missed_visit`. It is stored in one canonical spelling (keys in that
order, country upper case), so the same scope is always the same switch.

A paused switch holds every message that matches all of its parts: a message of that
country and purpose about to go on that channel. A paused channel holds the messages
that would go on it: they wait, and do not fall back to the next channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.channels.base import ChannelName
from app.config import PURPOSE_PATTERN

ALL = "all"
_KEYS = ("country", "channel", "purpose")


class ScopeError(ValueError):
    """A scope that does not parse; the message says why."""


@dataclass(frozen=True, slots=True)
class Scope:
    country: str | None = None
    channel: str | None = None
    purpose: str | None = None

    def __str__(self) -> str:
        parts = [f"{key}={value}" for key in _KEYS if (value := getattr(self, key)) is not None]
        return ",".join(parts) or ALL

    def covers(self, country: str | None, purpose: str | None, channel: str | None) -> bool:
        """Whether this scope covers a message; a None argument is one the message does
        not have (an invitation has no purpose), which a part naming it does not cover."""
        return (
            (self.country is None or self.country == country)
            and (self.purpose is None or self.purpose == purpose)
            and (self.channel is None or self.channel == channel)
        )


def parse_scope(text: str) -> Scope:
    """`country=IN,channel=whatsapp` -> Scope. Raises ScopeError with the reason."""
    text = text.strip()
    if text == ALL:
        return Scope()
    values: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise ScopeError(f"{part.strip()!r} is not key=value (keys: {', '.join(_KEYS)})")
        if key not in _KEYS:
            raise ScopeError(f"unknown scope key {key!r} (keys: {', '.join(_KEYS)})")
        if key in values:
            raise ScopeError(f"{key!r} is given twice")
        values[key] = value
    country = values.get("country")
    if country is not None:
        country = country.upper()
        if not (len(country) == 2 and country.isascii() and country.isalpha()):
            raise ScopeError(f"country {values['country']!r} is not a two-letter country code")
    channel = values.get("channel")
    known = sorted(name.value for name in ChannelName)
    if channel is not None and channel not in known:
        raise ScopeError(f"unknown channel {channel!r} (known: {', '.join(known)})")
    purpose = values.get("purpose")
    if purpose is not None and not PURPOSE_PATTERN.fullmatch(purpose):
        raise ScopeError(f"purpose {purpose!r} is not lower-case letters, digits and _")
    return Scope(country=country, channel=channel, purpose=purpose)


class Switchboard:
    """The paused scopes at one moment: what a dispatch batch checks its sends against."""

    def __init__(self, paused: Iterable[Scope] = ()) -> None:
        self.paused = tuple(paused)

    def holding(self, country: str | None, purpose: str | None, channel: str) -> Scope | None:
        """The paused scope that holds a message about to go on `channel`, if any."""
        country = country.upper() if country else None
        for scope in self.paused:
            if scope.covers(country, purpose, channel):
                return scope
        return None

    def holds_invitations(self) -> Scope | None:
        """The paused scope that stops Imo invitation rounds: `all` or `channel=imo`
        (rounds are planned by time zone, not country, and have no purpose)."""
        for scope in self.paused:
            if (
                scope.country is None
                and scope.purpose is None
                and scope.channel
                in (
                    None,
                    ChannelName.IMO,
                )
            ):
                return scope
        return None

    def __bool__(self) -> bool:
        return bool(self.paused)
