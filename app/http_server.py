"""How `notify api` serves HTTP: uvicorn with httptools, and limits on what a client may hold.

- The request head (request line and headers) is at most `MAX_HEADER_BYTES` (64 KiB):
  more is a 400 and the connection is closed. httptools has no limit of its own (a 64 MiB
  header took 5.9 s and 160 MB), so the bytes a head has taken are counted here, read by
  read (a read may also hold whole requests before it, never counted); the parser holds
  at most the limit plus two reads (of 256 KiB) before the answer.
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
        # A request's head has begun and is not complete; the bytes it has taken so far.
        self.head_open = False
        self.head_bytes = 0
        self.messages_ended = 0

    def _await_head(self) -> None:
        self._stop_waiting()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _idle(self) -> bool:
        """No request is being answered: the connection waits for (the rest of) a head."""
        return self.cycle is None or self.cycle.response_complete

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self._idle() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        was_open, ended = self.head_open, self.messages_ended
        super().data_received(data)
        if self.transport.is_closing():
            return
        if not self.head_open:
            self.head_bytes = 0
            return
        # A head is open after this read. If no message ended inside the read, all of it
        # was this head's (begun before it or at its start); else the read also held the
        # end of an earlier message, and this head's share of it is unknown: it is
        # counted from the next read on.
        if self.messages_ended == ended:
            self.head_bytes = (self.head_bytes if was_open else 0) + len(data)
        else:
            self.head_bytes = 0
        if self.head_bytes > self.max_head_bytes:
            self.logger.warning("Request head too large.")
            self.send_400_response("Request head too large.")

    def on_message_begin(self) -> None:
        self.head_open = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_open = False
        self._stop_waiting()
        # RFC 9112 3.2: an HTTP/1.1 request without Host is a 400 (as h11 answered). An
        # error raised here is the parser's: uvicorn answers 400 and closes.
        if self.parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _ in self.headers
        ):
            raise ValueError("HTTP/1.1 request without a Host header")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.messages_ended += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._idle():
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
