"""A cap on request bodies, enforced while they stream in: a 413, not memory exhaustion.

A declared `Content-Length` over the cap is refused before a byte is read; a body that
declares none (chunked) or lies is cut off as soon as it passes the cap.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body_for


class RequestSizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Paths (exact) whose route streams its body and takes more: their own cap.
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await self._too_large(max_bytes, scope.get("path", ""))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # FastAPI lets an HTTPException from reading the body through to the
                    # app's handler, which renders it as JSON.
                    raise HTTPException(413, _message(max_bytes))
            return message

        await self.app(scope, limited, send)

    @staticmethod
    def _too_large(max_bytes: int, path: str) -> JSONResponse:
        return JSONResponse(error_body_for(path, "payload_too_large", _message(max_bytes), []), 413)


def _message(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes"
