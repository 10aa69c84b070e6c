"""Keyset pagination for every list of the API: opaque cursors and the page split.

A list is read in a fixed order of a unique key (`(created_at, id)`, a name, ...); a page
is the first `limit` rows after the key of the previous page's last row, so a deep page
costs what the first one does. The cursor handed to the client is that key, as
URL-safe base64 of a JSON array.

Decoding is strict: a cursor that is not base64 of a JSON array of exactly the list's
key types, or holds a value PostgreSQL would refuse (a time outside the years this
service can have written, an integer beyond bigint, a string with NUL), is an
InvalidInput naming `cursor` (422), never an error of the database.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Query

from app.errors import InvalidInput, field_error

Row = TypeVar("Row")
KeyValue = datetime | uuid.UUID | str | int

MAX_PAGE_SIZE = 500
MAX_CURSOR_LENGTH = 500
# No row of this service was written outside these years.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
BIGINT = 2**63
MAX_STRING_LENGTH = 200

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        description="`next_cursor` of the previous page; omit for the first page",
    ),
]


def encode(*key: KeyValue) -> str:
    parts = [part.astimezone(UTC).isoformat() if isinstance(part, datetime) else part
             for part in key]  # fmt: skip
    raw = json.dumps([str(p) if isinstance(p, uuid.UUID) else p for p in parts])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str, *types: type[KeyValue]) -> tuple[Any, ...]:
    """The key of `types` (datetime, UUID, str, int) that `cursor` holds.

    Raises InvalidInput naming `cursor` for anything `encode` of such a key did not make.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (ValueError, binascii.Error) as exc:  # UnicodeDecodeError is a ValueError
        raise _not_a_cursor("it is not one this list handed out") from exc
    if not isinstance(parts, list) or len(parts) != len(types):
        raise _not_a_cursor("it is not one this list handed out")
    return tuple(_part(value, kind) for value, kind in zip(parts, types, strict=True))


def _part(value: Any, kind: type[KeyValue]) -> KeyValue:
    if kind is int:
        if type(value) is not int or not -BIGINT <= value < BIGINT:
            raise _not_a_cursor("it holds an integer out of range")
        return value
    if not isinstance(value, str) or len(value) > MAX_STRING_LENGTH or "\x00" in value:
        raise _not_a_cursor("it is not one this list handed out")
    if kind is str:
        return value
    if kind is uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError as exc:
            raise _not_a_cursor("it holds a malformed id") from exc
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a time without offset")
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _not_a_cursor("it holds a malformed time") from exc
    if not EARLIEST <= moment < LATEST:
        raise _not_a_cursor("it holds a time out of range")
    return moment


def _not_a_cursor(why: str) -> InvalidInput:
    return field_error("cursor", f"not a cursor of this list ({why}): pass `next_cursor` as given")


def split(
    rows: Sequence[Row], limit: int, key: Callable[[Row], tuple[KeyValue, ...]]
) -> tuple[list[Row], str | None]:
    """A page of `rows` (read with `limit + 1`) and the cursor of the next page, None
    on the last one."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, None
    return page, encode(*key(page[-1]))
