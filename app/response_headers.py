"""Headers on every answer: a request id, and what browsers and proxies must not do.

- `X-Request-ID`: the caller's, when it is a short token, else a new one. The id is in
  `scope["state"]["request_id"]` (`request.state.request_id`) for the log line of a 500.
- `X-Content-Type-Options: nosniff` everywhere; `Cache-Control: no-store` on `/v1`
  (patients' data must not sit in a proxy's or browser's cache) and on callbacks.
- `Strict-Transport-Security` in production, where PUBLIC_BASE_URL is https.

A 500 is answered outside every middleware (Starlette's ServerErrorMiddleware), so the
error handler (`app/errors.py`) adds `common_headers()` itself, with `Connection: close`.
"""

from __future__ import annotations

import re
import secrets
import string

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
PRIVATE_PREFIXES = ("/v1/", "/callbacks/")
HSTS = "max-age=31536000; includeSubDomains"
# Each of the 256 byte values to a lowercase letter: 20 random bytes, one call for the
# kernel's randomness (a letter drawn at a time was 20 calls: 8% of a callback's CPU).
_LETTERS = bytes(ord(string.ascii_lowercase[value % 26]) for value in range(256))


def common_headers(request_id: str, *, private: bool) -> dict[str, str]:
    headers = {"X-Request-ID": request_id, "X-Content-Type-Options": "nosniff"}
    if private:
        headers["Cache-Control"] = "no-store"
    return headers


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CALLER_ID.fullmatch(candidate):
                return candidate
    # Letters only: log redaction masks runs of digits, and an id must stay whole.
    return secrets.token_bytes(20).translate(_LETTERS).decode("ascii")


class ResponseHeaders:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        private = scope["path"].startswith(PRIVATE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(common_headers(request_id, private=private))
                if self.hsts:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
