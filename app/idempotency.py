"""The `Idempotency-Key` header of the writes that take one (scheduling a notification,
starting a broadcast, a staff message to a patient): one declaration, one check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from app.errors import field_error

IdempotencyKey = Annotated[
    str | None,
    Header(
        description="Retrying with the same key returns the first answer instead of doing "
        "the write twice; the same key with another body is a 422. Keys are scoped to the "
        "API key that sent them: another API key's `Idempotency-Key` never matches yours.",
    ),
]


def checked(key: str | None, longest: int = 255) -> str | None:
    """`key` if it is 1 to `longest` characters (or absent); else InvalidInput naming the
    header."""
    if key is not None and not 1 <= len(key) <= longest:
        raise field_error("Idempotency-Key", f"must be 1 to {longest} characters")
    return key
