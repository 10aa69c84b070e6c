"""Ids of the rows written by the million (notifications, webhook events): time-ordered
UUIDs (version 7, RFC 9562: the milliseconds since 1970 in the first 48 bits, then 74
random bits), so that each new row's entry lands at the right edge of an index on its
id, not on a random one of its pages. On a table of years of history, a random (version
4) id makes nearly every insert, and every non-HOT update, touch a page not touched
since the last checkpoint: a full-page image in the WAL each time (docs/benchmarks.md,
"Time-ordered ids").

`time_ordered_uuid()` in SQL (migration 20261206_time_ordered_ids) makes the same ids
for the statements that insert rows by the set (a broadcast's chunk)."""

from __future__ import annotations

import os
import time
import uuid

_VERSION = 0x7 << 76
_VERSION_MASK = 0xF << 76
_VARIANT = 0x2 << 62  # RFC 9562's variant: 10
_VARIANT_MASK = 0x3 << 62


def time_ordered_uuid() -> uuid.UUID:
    """A version 7 UUID of now: ordered by its millisecond, random within it."""
    milliseconds = time.time_ns() // 1_000_000
    value = int.from_bytes(milliseconds.to_bytes(6, "big") + os.urandom(10), "big")
    return uuid.UUID(int=(value & ~_VERSION_MASK & ~_VARIANT_MASK) | _VERSION | _VARIANT)
