"""What every request body may hold: the one home of the rules that keep bad input a 422.

`InputModel` is the base of every request schema. Before a field is validated, its raw
value is walked (strings, numbers, nested lists and objects, object keys too) and
refused when PostgreSQL, JSONB or a message text cannot take it:

- a null character or a lone surrogate (PostgreSQL cannot store either);
- a control character other than tab and line breaks, or a bidirectional embedding,
  override or isolate (U+202A-U+202E, U+2066-U+2069): they would reach a patient's
  message text, where an override can make a name or a date read backwards;
- a number that is not finite (`NaN`, `Infinity`, `1e400`) or an integer outside 64 bits.

`SingleLine` also refuses line breaks, for values that are dropped into a sentence
(names, template variables). `BoundedDate` / `BoundedDatetime` keep dates inside the
years a reminder can be about, so that date arithmetic (plan offsets, time zones,
expiry) never leaves the calendar.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    field_validator,
    model_validator,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EARLIEST_DATE = date(1900, 1, 1)
LATEST_DATE = date(2999, 12, 31)

# C0 controls but tab and line breaks, DEL, C1 controls, bidi embeddings, overrides and
# isolates, and lone surrogates (JSON's "\ud800" decodes to one).
_UNSTORABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_LINE_BREAK = re.compile("[\t\n\r\u2028\u2029]")
# What PostgreSQL cannot hold in a text column or JSONB at all.
_NOT_STORABLE_AT_ALL = re.compile("[\x00\ud800-\udfff]")


def _describe(character: str) -> str:
    if character == "\x00":
        return "a null character (U+0000)"
    if "\ud800" <= character <= "\udfff":
        return f"a lone surrogate (U+{ord(character):04X})"
    if "\u202a" <= character <= "\u202e" or "\u2066" <= character <= "\u2069":
        return f"a bidirectional control character (U+{ord(character):04X})"
    return f"a control character (U+{ord(character):04X})"


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_storable(value: Any, where: str = "") -> None:
    """Raise ValueError naming the first part of `value` (a decoded JSON value) that the
    rules above refuse; `where` prefixes the message with the path inside the field."""
    prefix = f"{_printable(where)}: " if where else ""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found is not None:
            raise ValueError(f"{prefix}contains {_describe(found.group())}")
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{prefix}integer outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{prefix}must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, f"{where}.{key}" if where else str(key))
            check_storable(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_storable(item, f"{where}[{index}]")


def storable_text(text: str) -> str:
    """`text` with each null character and lone surrogate replaced by U+FFFD: for what a
    provider hands over (a patient's message, a status's error text, a message id), which
    is kept as it came rather than refused, and which PostgreSQL cannot store with those
    in it (a 500, and the provider's retry would fail the same way)."""
    return _NOT_STORABLE_AT_ALL.sub("\ufffd", text)


def check_keys(value: Any, where: str = "", *, depth: int | None = None) -> None:
    """`check_storable` for the object keys in `value` only, `depth` levels down (None:
    all). Keys are checked before pydantic sees them: an unknown key is quoted in its
    error, and pydantic-core cannot even take one holding a lone surrogate."""
    if depth == 0:
        return
    below = None if depth is None else depth - 1
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            check_storable(key, path)
            check_keys(item, path, depth=below)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_keys(item, f"{where}[{index}]", depth=below)


class InputModel(BaseModel):
    """The base of every request body: extra fields refused, every value storable."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_keys(cls, data: Any) -> Any:
        check_keys(data)
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        check_storable(value)
        return value


def _single_line(value: str) -> str:
    if _LINE_BREAK.search(value):
        raise ValueError("must be one line: no tabs or line breaks")
    return value


def _bounded_date(value: date) -> date:
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValueError(f"must be between {EARLIEST_DATE} and {LATEST_DATE}")
    return value


def _bounded_datetime(value: datetime) -> datetime:
    _bounded_date(value.date())
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]
BoundedDate = Annotated[date, AfterValidator(_bounded_date)]
BoundedDatetime = Annotated[AwareDatetime, AfterValidator(_bounded_datetime)]
