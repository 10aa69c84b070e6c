"""Where the service may send webhooks: server-side request forgery stops here."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from app.config import Settings
from app.errors import field_error


async def check_url(url: str, settings: Settings) -> None:
    """Raises InvalidInput naming `url` for a URL the service must not call: not https in
    production, or a host that resolves to a loopback, link-local, private or otherwise
    non-public address (unless WEBHOOK_ALLOW_PRIVATE), or does not resolve."""
    parts = urlsplit(url)
    allowed_schemes = ("https",) if settings.is_production else ("https", "http")
    if parts.scheme not in allowed_schemes or not parts.hostname:
        raise field_error("url", f"must be an absolute {' or '.join(allowed_schemes)} URL")
    if parts.username or parts.password:
        raise field_error("url", "must not carry credentials")
    if settings.webhook_allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise field_error("url", "its host does not resolve") from exc
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global or ip.is_multicast:
            raise field_error(
                "url", "its host is not a public address (set WEBHOOK_ALLOW_PRIVATE=true)"
            )
