"""A browser-like client of the dashboard on the test's rolled-back transaction, and
operators to log in with."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.operators import service as operator_service

BASE_URL = "http://dashboard.test"
MakeOperator = Callable[[str], Awaitable[tuple[str, str]]]


def form_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    form = await client.get("/dashboard/login")
    return await client.post(
        "/dashboard/login",
        data={"email": email, "password": password, "csrf_token": form_token(form.text)},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def dashboard(
    api_app: FastAPI, db_sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """No API key, no cookie: a browser that has not logged in. (`redis`: the login
    counters are flushed after the test.)"""
    original = api_app.state.sessionmaker
    api_app.state.sessionmaker = db_sessionmaker
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api_app), base_url=BASE_URL
        ) as client:
            yield client
    finally:
        api_app.state.sessionmaker = original


@pytest_asyncio.fixture(loop_scope="session")
async def make_operator(db_sessionmaker: async_sessionmaker[AsyncSession]) -> MakeOperator:
    """`await make_operator(role)`: a committed operator's (email, password)."""
    count = 0

    async def make(role: str) -> tuple[str, str]:
        nonlocal count
        count += 1
        email = f"{role}{count}@clinic.test"
        async with db_sessionmaker() as session:
            _, password = await operator_service.create_operator(session, email, role)
            await session.commit()
        return email, password

    return make
