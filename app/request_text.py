"""Query strings and paths held to the same rule as bodies (`app/validation.py`): a
null, control or bidi character or a lone surrogate in either is a 422 before any
route runs. PostgreSQL cannot compare a text with a null byte in it, so a list filter
given `%00` was a 500 (found by tests/test_fuzz.py)."""

from __future__ import annotations

from html import escape
from urllib.parse import unquote

from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body
from app.validation import check_storable


def _page(detail: dict[str, str]) -> str:
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>Refused</title>'
        '<h1>Refused</h1><p role="alert">The address has a character the service cannot'
        f" take ({escape(detail['field'])}: {escape(detail['message'])}).</p>"
        '<p><a href="/dashboard/">Back to the dashboard</a></p></html>'
    )


class RefuseUnstorableText:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = unquote(scope.get("query_string", b"").decode("latin-1"), errors="replace")
            for where, text in (("query", query), ("path", scope["path"])):
                try:
                    check_storable(text, where)
                except ValueError as exc:
                    detail = {"field": where, "message": str(exc)}
                    if scope["path"].startswith("/dashboard/"):
                        # A person reads this one: a page, not the API's JSON.
                        await HTMLResponse(_page(detail), 422)(scope, receive, send)
                        return
                    body = error_body("invalid_request", f"invalid request: {where}", [detail])
                    await JSONResponse(body, 422)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
