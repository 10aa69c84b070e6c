"""The event loop of the service's long-running processes (workers, the fakes, the
benchmarks' load generators)."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it comes with uvicorn[standard]), else asyncio's.
    uvloop halves the event loop's share of each request on the send path."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
