"""Where the service may send webhooks: server-side request forgery stops here.

A URL is checked when it is saved (`check_url`) and again at every delivery: its form
without any look-up (`delivery_refusal`), and the addresses its host resolves to when
the connection is made (`PublicAddressResolver`, the sender's connector's resolver). A
host that resolved to a public address when saved and to an internal one since (DNS
rebinding) is refused on the very addresses the connection would use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.config import Settings
from app.errors import field_error

NOT_PUBLIC = "its host is not a public address (set WEBHOOK_ALLOW_PRIVATE=true)"


def is_public(address: str) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _form_refusal(url: str, settings: Settings) -> str | None:
    parts = urlsplit(url)
    allowed_schemes = ("https",) if settings.is_production else ("https", "http")
    if parts.scheme not in allowed_schemes or not parts.hostname:
        return f"must be an absolute {' or '.join(allowed_schemes)} URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


async def check_url(url: str, settings: Settings) -> None:
    """Raises InvalidInput naming `url` for a URL the service must not call: not https in
    production, or a host that resolves to a loopback, link-local, private or otherwise
    non-public address (unless WEBHOOK_ALLOW_PRIVATE), or does not resolve."""
    refusal = _form_refusal(url, settings)
    if refusal is not None:
        raise field_error("url", refusal)
    if settings.webhook_allow_private:
        return
    parts = urlsplit(url)
    assert parts.hostname is not None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise field_error("url", "its host does not resolve") from exc
    for *_, address in found:
        if not is_public(str(address[0])):
            raise field_error("url", NOT_PUBLIC)


def delivery_refusal(url: str, settings: Settings) -> str | None:
    """Why a stored URL must not be called now, without a DNS look-up (the connector's
    resolver checks names): its form under today's settings, or a literal address that is
    not public. None: go ahead."""
    refusal = _form_refusal(url, settings)
    if refusal is not None:
        return refusal
    if settings.webhook_allow_private:
        return None
    host = urlsplit(url).hostname or ""
    try:
        literal = not is_public(host)
    except ValueError:
        return None  # a name: resolved, and checked, when connecting
    return NOT_PUBLIC if literal else None


class TargetRefused(OSError):
    """A webhook URL the service must not call now (its form, or its host's addresses)."""


class PublicAddressResolver(AbstractResolver):
    """Resolves with `inner` and refuses a host any of whose addresses is not public: the
    connection goes to the addresses checked here, never to a second look-up's."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if any(not is_public(result["host"]) for result in found):
            raise TargetRefused(f"webhook host resolves to a non-public address: {NOT_PUBLIC}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def connector(settings: Settings, **options: Any) -> aiohttp.TCPConnector:
    """The webhook sender's connector: outside WEBHOOK_ALLOW_PRIVATE, every name is
    resolved through PublicAddressResolver."""
    if settings.webhook_allow_private:
        return aiohttp.TCPConnector(**options)
    return aiohttp.TCPConnector(resolver=PublicAddressResolver(), **options)
