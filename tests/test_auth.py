"""Every /v1 route refuses a missing, wrong or revoked key, found by walking the app."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import service as auth_service
from app.errors import Conflict, NotFound
from app.models import ApiKey

pytestmark = pytest.mark.asyncio(loop_scope="session")


def v1_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app publishes under /v1, path parameters filled in."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            filled = re.sub(r"\{[^}]+\}", "x", path)
            routes.extend((method.upper(), filled) for method in sorted(operations))
    return routes


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    api_app: FastAPI, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    original = api_app.state.sessionmaker
    api_app.state.sessionmaker = db_sessionmaker
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api_app), base_url="http://test"
        ) as c:
            yield c
    finally:
        api_app.state.sessionmaker = original


async def test_the_walk_finds_the_routes(api_app: FastAPI) -> None:
    found = v1_routes(api_app)
    assert ("PUT", "/v1/patients/x") in found and ("POST", "/v1/notifications") in found
    assert len(found) >= 10


async def test_every_v1_route_refuses_missing_wrong_and_revoked_keys(
    api_app: FastAPI,
    client: httpx.AsyncClient,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with db_sessionmaker() as session:
        revoked, revoked_key = await auth_service.create_api_key(session, "old")
        await auth_service.revoke_api_key(session, revoked.id)
        await session.commit()
    credentials = {
        "missing": {},
        "wrong": {"Authorization": "Bearer cn_not-a-real-key"},
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "revoked": {"Authorization": f"Bearer {revoked_key}"},
    }
    for method, path in v1_routes(api_app):
        for name, headers in credentials.items():
            answer = await client.request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (method, path, name, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_keys_are_stored_hashed(db_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with db_sessionmaker() as session:
        row, key = await auth_service.create_api_key(session, "clinic")
        assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64
        assert (await auth_service.authenticate(session, key)) is not None
        assert (await auth_service.authenticate(session, key + "x")) is None


class TestLastUsed:
    async def test_is_set_on_use_and_written_at_most_once_a_minute(
        self, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        async with db_sessionmaker() as session:
            row, key = await auth_service.create_api_key(session, "clinic")
            assert row.last_used_at is None
            await auth_service.authenticate(session, key)
            await session.refresh(row)
            first = row.last_used_at
            assert first is not None
            await session.execute(
                update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=first)
            )
            await auth_service.authenticate(session, key)
            await session.refresh(row)
            assert row.last_used_at == first  # within the minute: not written again
            stale = first - timedelta(minutes=2)
            await session.execute(
                update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=stale)
            )
            await session.refresh(row)
            await auth_service.authenticate(session, key)
            await session.refresh(row)
            assert row.last_used_at is not None and row.last_used_at > stale


class TestRevokeByNameOrPrefix:
    async def test_by_prefix_or_unique_name(
        self, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        async with db_sessionmaker() as session:
            name = f"clinic-{uuid.uuid4().hex[:8]}"
            first, first_key = await auth_service.create_api_key(session, name)
            revoked = await auth_service.revoke_by_name_or_prefix(session, name)
            assert revoked.id == first.id
            assert await auth_service.authenticate(session, first_key) is None
            second, _ = await auth_service.create_api_key(session, name)
            _, third_key = await auth_service.create_api_key(session, name)
            with pytest.raises(Conflict, match="revoke one by its prefix"):
                await auth_service.revoke_by_name_or_prefix(session, name)
            revoked = await auth_service.revoke_by_name_or_prefix(session, second.prefix)
            assert revoked.id == second.id
            assert await auth_service.authenticate(session, third_key) is not None
            with pytest.raises(NotFound):
                await auth_service.revoke_by_name_or_prefix(session, "nobody-at-all")
