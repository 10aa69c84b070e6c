"""The `/v1` guard: every route under it requires a live API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import service as auth_service
from app.auth.repository import PresentedKey
from app.db.session import DbSession
from app.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="An API key from `notify api-keys create`")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: DbSession,
) -> PresentedKey:
    """Checks the key in the request's own unit of work (FastAPI hands the endpoint the
    same session): one pool checkout and one transaction per request, not two (a
    transaction's BEGIN and COMMIT are two round trips of a scheduling request's six)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    api_key = await auth_service.authenticate(session, credentials.credentials)
    if api_key is None:
        raise Unauthorized("invalid or revoked API key")
    request.state.api_key_id = api_key.id
    return api_key
