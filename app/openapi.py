"""The OpenAPI document as integrators use it to generate clients.

- Every operation's id is its endpoint function's name (`schedule_notification`,
  `get_patient`): short, and stable as long as the function keeps its name (a test lists
  them all).
- Every error answer an operation can give is declared with the app's error JSON
  (`ErrorResponse`): the ones each route declares (404, 409, ...), plus those that follow
  from the app itself: 401 on `/v1` (API key), 413 for a body (RequestSizeLimit), 422 for
  a parameter or body that does not validate. FastAPI's own `HTTPValidationError` shape,
  which this app never answers, is replaced.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.errors import ErrorResponse

_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
_UNAUTHORIZED = "Missing, wrong or revoked API key"
_TOO_LARGE = "The body is larger than the service accepts (`MAX_REQUEST_BYTES`)"
_INVALID = "A parameter or body that does not validate; `details` names each field"


def operation_id(route: APIRoute) -> str:
    return route.name


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and `/openapi.json`) the document described above. The app
    must be built with `generate_unique_id_function=operation_id`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _declare_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_errors(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    model = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(model.pop("$defs", {}))
    schemas["ErrorResponse"] = model
    for path, operations in document["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                responses.setdefault("401", {"description": _UNAUTHORIZED})
            if "requestBody" in operation or path.startswith("/callbacks/"):
                responses.setdefault("413", {"description": _TOO_LARGE})
            if "422" in responses and responses["422"]["description"] == "Validation Error":
                responses["422"]["description"] = _INVALID
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = {"application/json": {"schema": _ERROR_SCHEMA}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
