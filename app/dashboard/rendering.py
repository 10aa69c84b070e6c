"""Jinja2 pages of the dashboard (autoescaped), and its static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from app.dashboard.security import csrf_token
from app.operators.service import SignedIn

_HERE = Path(__file__).parent
pages = Jinja2Templates(directory=_HERE / "html")
static_files = StaticFiles(directory=_HERE / "static")


def render(
    request: Request,
    page: str,
    signed: SignedIn | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page, with the operator and their CSRF token for its forms when signed in."""
    if signed is not None:
        context.update(operator=signed.operator, csrf_token=csrf_token(request, signed))
    response = pages.TemplateResponse(request, page, context, status_code=status_code)
    # Pages show patients' data: never cached, never framed by another site.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response
