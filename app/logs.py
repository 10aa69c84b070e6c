"""Structured logs: one JSON object a line, with ids; never a full phone number or text.

`redact()` is the last guard: any E.164-looking number in a message or field is masked
before a line is written, whatever the caller passed. Exceptions are written by
`exception_text()`: the traceback's frames (no local variables) and each exception's
message, except a database error's, which may quote the row it failed on (a patient's
name, a rendered reminder): only its class and SQLSTATE are kept.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any

import orjson
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from pydantic import ValidationError

# Any run of 7 or more digits, whatever separates them (spaces, `-`, `.`, `/`,
# parentheses) and whatever is around them (`+880 1712-345671`, `8801712345671x`, a
# number inside an id): +8801711000001 -> +88017******01, 01711000001 -> *********01.
# An ISO date (2026-12-04) is kept, so that logs still say when; times have colons.
_PHONE = re.compile(
    r"(?<!\d)(?!(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?!\d))"
    r"\+?\d(?:[\s\-./()]{0,3}\d){6,}"
)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


def mask_email(address: str) -> str:
    """`rahim.uddin@mail.example.org` -> `r*********n@mail.example.org`: the domain (to
    tell providers apart) and the local part's first and last characters."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "*" * max(len(address) - 2, 0) + address[-2:]
    if len(local) <= 2:
        return f"{'*' * len(local)}@{domain}"
    return f"{local[0]}{'*' * (len(local) - 2)}{local[-1]}@{domain}"


def mask_phone(e164: str) -> str:
    """`+8801711000001` -> `+88017******01`: country code, two more digits, last two;
    enough to tell numbers apart in a log, not to dial one.

    Anything that is not E.164 keeps only its last two characters.
    """
    if not (e164.startswith("+") and e164[1:].isdigit()):
        return "*" * max(len(e164) - 2, 0) + e164[-2:]
    digits = e164[1:]
    country_code = next(
        (digits[:n] for n in (1, 2, 3) if int(digits[:n] or 0) in COUNTRY_CODE_TO_REGION_CODE),
        digits[:1],
    )
    national = digits[len(country_code) :]
    if len(national) >= 7:
        masked = national[:2] + "*" * (len(national) - 4) + national[-2:]
    else:
        masked = "*" * max(len(national) - 2, 0) + national[-2:]
    return f"+{country_code}{masked}"


def _mask_run(found: re.Match[str]) -> str:
    run = found.group(0)
    digits = "".join(character for character in run if character.isdigit())
    return mask_phone("+" + digits if run.startswith("+") else digits)


def redact(value: str) -> str:
    return _PHONE.sub(_mask_run, value)


# Exceptions of these packages carry SQL parameters, or PostgreSQL's DETAIL with the
# failing row, in their messages.
_DATABASE_PACKAGES = ("sqlalchemy", "asyncpg")
# A validation error's message quotes the input it refused (a message text, a name).
_VALIDATION_PACKAGES = ("pydantic", "pydantic_core")


def is_database_error(module: str) -> bool:
    """True for an exception class defined in `module` of a database package."""
    return module.split(".", 1)[0] in _DATABASE_PACKAGES


def hides_message(module: str) -> bool:
    """True for an exception class of `module` whose message quotes the values it was
    given (SQL parameters, a failing row, a refused input): never logged as it is."""
    return is_database_error(module) or module.split(".", 1)[0] in _VALIDATION_PACKAGES


def error_message(error: BaseException) -> str:
    """What may be logged of `error`'s own message."""
    if isinstance(error, ValidationError):
        where = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['type']}"
            for e in error.errors(include_input=False, include_url=False)[:10]
        )
        return f"{error.error_count()} validation errors for {error.title} ({where})"
    if not is_database_error(type(error).__module__):
        return redact(str(error))
    orig = getattr(error, "orig", None) or error
    sqlstate = getattr(orig, "sqlstate", None)
    kind = type(orig).__name__
    return (
        f"{kind} (SQLSTATE {sqlstate}); message hidden" if sqlstate else f"{kind}; message hidden"
    )


def error_summary(error: BaseException) -> str:
    """One line: the exception's class and safe message, and where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"{type(error).__qualname__}: {error_message(error)}{where}"


def exception_text(error: BaseException) -> str:
    """A traceback like Python's, each message passed through `error_message()`."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause = current.__cause__
        current = (
            cause if cause is not None or current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for link in reversed(chain):
        if parts:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        kind = type(link)
        parts.append(f"{kind.__module__}.{kind.__qualname__}: {error_message(link)}\n")
    return "".join(parts).rstrip()


class SafeExceptions(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return exception_text(ei[1]) if ei and ei[1] is not None else ""


class JsonFormatter(SafeExceptions):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(SafeExceptions):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class AnsweredErrors(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" and its whole traceback: the
    app's 500 handler (app/errors.py) has logged that error in one line with its request
    id, and Starlette re-raises it to the server all the same (one 500 was ~12 KB)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # Only an Exception reaches the handler: a cancellation or exit is still told.
        answered = isinstance(error, Exception)
        return not (answered and str(record.msg).startswith("Exception in ASGI application"))


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would carry callback tokens and query strings; the API logs its own.
    logging.getLogger("uvicorn.access").disabled = True
    server_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, AnsweredErrors) for f in server_errors.filters):
        server_errors.addFilter(AnsweredErrors())
    for noisy in ("httpx", "arq.worker", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
