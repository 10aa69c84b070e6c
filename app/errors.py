"""One error hierarchy with an HTTP status each, and the handlers that render them.

Every error answer is JSON: `{"error": {"code": ..., "message": ..., "details": [...]}}`.
Expected failures are 4xx; only the unexpected reaches Sentry.
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.logs import error_summary
from app.response_headers import PRIVATE_PREFIXES, common_headers, request_id_of

log = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class Gone(AppError):
    status_code = 410
    code = "gone"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class InvalidInput(AppError):
    """Well-formed JSON that breaks a rule: an unknown template, a missing variable."""

    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class ErrorDetail(BaseModel):
    field: str = Field(description="The field at fault, e.g. `phone_numbers[0].number`")
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(
        description="Stable, for programs: `not_found`, `invalid_input`, `conflict`, ...",
        examples=["not_found"],
    )
    message: str = Field(description="For people")
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """Every error answer of the API (what `error_body` makes)."""

    error: ErrorInfo


def field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, details=[{"field": field, "message": message}])


def error_body(code: str, message: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


# Paths whose clients read errors as cht-core writes them, `{"error": true, "message"}`
# (the cht-gateway phones' endpoint), whoever answers: the endpoint, a 405, a 413, a 500.
CHT_ERROR_PREFIXES = ("/gateway/api/",)


def error_body_for(
    path: str, code: str, message: str, details: list[dict[str, Any]]
) -> dict[str, Any]:
    """`error_body`, or cht-core's shape on the paths of CHT_ERROR_PREFIXES."""
    if path.startswith(CHT_ERROR_PREFIXES):
        return {"error": True, "message": message}
    return error_body(code, message, details)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "phone_numbers", 0, "number") -> "phone_numbers[0].number"
    parts: list[str] = []
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or str(loc[0] if loc else "")


def _encodable(text: str) -> str:
    """`text` with lone surrogates escaped: a field name taken from the request (an
    unknown key) may hold one, and UTF-8 cannot encode the answer then."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_details(errors: Any) -> list[dict[str, Any]]:
    return [
        {
            "field": _encodable(_location(err.get("loc", ()))),
            "message": _encodable(str(err.get("msg", "invalid"))),
        }
        for err in errors
    ]


# PostgreSQL's SQLSTATE of a CHECK constraint violation.
CHECK_VIOLATION = "23514"


def check_constraint_of(exc: IntegrityError) -> str:
    """The name of the CHECK constraint `exc` reports (asyncpg's error, under the
    DBAPI's), or `unknown`: a name of the schema, never a value of the row."""
    cause = getattr(exc.orig, "__cause__", None)
    return str(getattr(cause, "constraint_name", None) or "unknown")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc.errors())
        fields = ", ".join(sorted({d["field"] for d in details if d["field"]}))
        message = f"invalid request: {fields}" if fields else "invalid request"
        return JSONResponse(error_body("invalid_request", message, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body_for(request.url.path, code, str(exc.detail), []),
            exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # A CHECK of the schema (a notification to exactly one of a patient or a staff
        # member, a state) broken by a request that validation let through: the input is
        # at fault, a 422 naming the rule, never a 500; Sentry still hears of the gap.
        if str(getattr(exc.orig, "sqlstate", "") or "") != CHECK_VIOLATION:
            raise exc  # on to the 500 of `_unexpected`, as before, and to Sentry
        constraint = check_constraint_of(exc)
        log.warning("check constraint refused a request", extra={"constraint": constraint})
        sentry_sdk.capture_exception(exc)
        message = f"the request breaks a rule of the data ({constraint})"
        return JSONResponse(error_body("invalid_input", message, []), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # One line, no traceback: Sentry's FastAPI integration captures the whole of it.
        # The connection is closed: whatever broke may have left it in a bad state.
        request_id = getattr(request.state, "request_id", None) or request_id_of(request.scope)
        log.error(
            "unhandled error",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.url.path,
                "error": error_summary(exc),
            },
        )
        sentry_sdk.set_tag("request_id", request_id)
        private = request.url.path.startswith(PRIVATE_PREFIXES)
        headers = {**common_headers(request_id, private=private), "Connection": "close"}
        return JSONResponse(
            error_body_for(
                request.url.path, "internal_error", f"internal error (request {request_id})", []
            ),
            500,
            headers=headers,
        )
