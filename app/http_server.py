"""How `notify api` serves HTTP: uvicorn with httptools, and limits on what a client may hold.

- The request head (request line and headers) is at most `MAX_HEADER_BYTES` (64 KiB):
  more is a 400 and the connection is closed. httptools has no limit of its own (a 64 MiB
  header took 5.9 s and 160 MB), so the bytes a head has taken are counted here; the
  parser holds at most the limit plus one read (256 KiB) before the answer.
- A request head must arrive within `REQUEST_HEAD_TIMEOUT_SECONDS` of the connection
  opening, or of the previous request on a kept-alive connection; a client that trickles
  its headers (slow loris) is disconnected then. uvicorn has no such timer of its own:
  its keep-alive timer stops at the first byte of the next request.
- An idle kept-alive connection is closed after `KEEP_ALIVE_SECONDS`.

httptools (C) and not h11 (pure Python): h11 parsing and framing took about a third of
the API's CPU per provider callback (docs/benchmarks.md, "The API's own costs").
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import get_settings

KEEP_ALIVE_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 5


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a size limit and a deadline on each request head."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # From the settings, not uvicorn's Config: every worker process reads its own.
        settings = get_settings()
        self.head_timeout = settings.request_head_timeout_seconds
        self.max_head_bytes = settings.max_header_bytes
        self.head_deadline: asyncio.TimerHandle | None = None
        # Between requests or inside a head; the bytes that head has taken so far.
        self.reading_head = True
        self.head_bytes = 0

    def _await_head(self) -> None:
        self._stop_waiting()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.reading_head and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        in_head = self.reading_head
        super().data_received(data)
        # All of `data` was head if a head was being read before and still is after (a
        # head completed inside it reset the count).
        if in_head and self.reading_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head_bytes:
                self.logger.warning("Request head too large.")
                self.send_400_response("Request head too large.")

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = 0
        self._stop_waiting()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.reading_head = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.reading_head:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)


def serve(*, host: str, port: int, workers: int = 1) -> None:
    """Run the API until SIGTERM or SIGINT (uvicorn's own signal handling)."""
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_config=None,  # the app's structured logging, not uvicorn's own
        proxy_headers=True,
        server_header=False,
        # Requests still running this long after SIGTERM are cancelled.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
