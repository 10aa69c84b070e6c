"""The `/v1` guard: every route under it requires a live API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import service as auth_service
from app.errors import Unauthorized
from app.models import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key from `notify api-keys create`")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    sessionmaker = request.app.state.sessionmaker
    async with sessionmaker() as session:
        api_key = await auth_service.authenticate(session, credentials.credentials)
    if api_key is None:
        raise Unauthorized("invalid or revoked API key")
    request.state.api_key_id = api_key.id
    return api_key
