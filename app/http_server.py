"""How `notify api` serves HTTP: uvicorn with limits on what a client may hold.

- The request head (request line and headers) is at most `MAX_HEADER_BYTES` (64 KiB):
  h11 refuses more with a 400. (httptools, uvicorn's default parser when installed,
  has no limit: a 64 MiB header took 5.9 s and 160 MB.)
- A request head must arrive within `REQUEST_HEAD_TIMEOUT_SECONDS` of the connection
  opening, or of the previous answer on a kept-alive connection; a client that trickles
  its headers (slow loris) is disconnected then. uvicorn has no such timer of its own:
  its keep-alive timer stops at the first byte of the next request.
- An idle kept-alive connection is closed after `KEEP_ALIVE_SECONDS`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Settings, get_settings

KEEP_ALIVE_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 5


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request head."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # From the settings, not uvicorn's Config: every worker process reads its own.
        self.head_timeout = get_settings().request_head_timeout_seconds
        self.head_deadline: asyncio.TimerHandle | None = None

    def _await_head(self) -> None:
        self._stop_waiting()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Run the API until SIGTERM or SIGINT (uvicorn's own signal handling)."""
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_config=None,  # the app's structured logging, not uvicorn's own
        proxy_headers=True,
        server_header=False,
        # Requests still running this long after SIGTERM are cancelled.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
