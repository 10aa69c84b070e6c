"""One request to a provider (a POST, or a GET), as the aiohttp adapters make it: a
time-out or a connection error becomes a TransientChannelError carrying the exchange,
nothing else escapes."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from app.channels.base import TransientChannelError


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None


def exchange(
    request: dict[str, object],
    *,
    status: int | None = None,
    body: str = "",
    error: BaseException | None = None,
) -> dict[str, object]:
    """A request (already masked by the adapter) and what came back, for Sentry."""
    response: dict[str, object] = {"status": status, "body": body}
    if error is not None:
        response["error"] = f"{type(error).__name__}: {error}"
    return {"request": request, "response": response}


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: dict[str, str],
    limit: aiohttp.ClientTimeout,
    provider: str,
    request: dict[str, object],
) -> Answer:
    """The provider's answer (within `limit`), whatever its status. Raises
    TransientChannelError (codes `timeout`, `connection_error`) with `request` in its
    detail when there is none."""
    return await _ask(session, "POST", url, data, headers, limit, provider, request)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str],
    limit: aiohttp.ClientTimeout,
    provider: str,
    request: dict[str, object],
) -> Answer:
    """As `post`, for a GET."""
    return await _ask(session, "GET", url, None, headers, limit, provider, request)


async def _ask(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    data: bytes | None,
    headers: dict[str, str],
    limit: aiohttp.ClientTimeout,
    provider: str,
    request: dict[str, object],
) -> Answer:
    try:
        async with session.request(
            method, url, data=data, headers=headers, timeout=limit, allow_redirects=False
        ) as response:
            return Answer(
                response.status, await response.read(), response.headers.get("Retry-After")
            )
    except TimeoutError as exc:
        raise TransientChannelError(
            f"{provider} did not answer in time",
            code="timeout",
            detail=exchange(request, error=exc),
        ) from None
    except aiohttp.ClientError as exc:
        raise TransientChannelError(
            f"could not reach {provider}",
            code="connection_error",
            detail=exchange(request, error=exc),
        ) from None
