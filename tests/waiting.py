"""Waiting for something to happen without sleeping for a fixed time.

`wait_until(condition, timeout=...)` polls `condition` (a plain or an async callable)
until it answers something truthy, and returns that answer; after `timeout` seconds it
fails with the last answer. A test waits as long as the event takes, not as long as the
slowest machine might need.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], T | Awaitable[T]], *, timeout: float = 5.0, interval: float = 0.01
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        answer = condition()
        last: T = await answer if inspect.isawaitable(answer) else answer  # type: ignore[assignment]
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)
