"""Who gets into the dashboard: logins, sessions, roles, CSRF, and the API kept apart."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import service as auth_service
from app.dashboard import endpoints as dashboard_endpoints
from app.dashboard.security import SESSION_COOKIE
from app.operators import service as operator_service
from tests.dashboard.conftest import MakeOperator, form_token, log_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


def dashboard_pages() -> list[str]:
    """Every GET page of the dashboard's router but the login form."""
    return sorted(
        route.path
        for route in dashboard_endpoints.router.routes
        if isinstance(route, APIRoute)
        and "GET" in route.methods
        and route.path != "/dashboard/login"
    )


class TestLogin:
    async def test_the_right_password_opens_the_dashboard(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        answer = await log_in(dashboard, email, password)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/"
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        page = await dashboard.get("/dashboard/")
        assert page.status_code == 200 and email in page.text

    async def test_a_wrong_password_or_unknown_email_is_refused_alike(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        wrong = await log_in(dashboard, email, password + "x")
        unknown = await log_in(dashboard, "nobody@clinic.test", password)
        for answer in (wrong, unknown):
            assert answer.status_code == 401 and "wrong email or password" in answer.text
            assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
        assert (await dashboard.get("/dashboard/")).status_code == 303

    async def test_logins_are_limited_per_account(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        for _ in range(operator_service.LOGIN_FAILURES_PER_ACCOUNT):
            assert (await log_in(dashboard, email, "guess")).status_code == 401
        # Past the limit even the right password is refused, unchecked, for the window.
        refused = await log_in(dashboard, email, password)
        assert refused.status_code == 429 and "too many failed logins" in refused.text
        other_email, other_password = await make_operator("viewer")
        assert (await log_in(dashboard, other_email, other_password)).status_code == 303

    async def test_logins_are_limited_per_address(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        for number in range(operator_service.LOGIN_FAILURES_PER_ADDRESS):
            answer = await log_in(dashboard, f"guess{number}@clinic.test", "guess")
            assert answer.status_code == 401
        assert (await log_in(dashboard, email, password)).status_code == 429

    async def test_a_disabled_operator_cannot_log_in(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        email, password = await make_operator("admin")
        async with db_sessionmaker() as session:
            await operator_service.disable_operator(session, email)
            await session.commit()
        assert (await log_in(dashboard, email, password)).status_code == 401

    async def test_next_never_leads_off_the_dashboard(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        form = await dashboard.get("/dashboard/login")
        answer = await dashboard.post(
            "/dashboard/login",
            data={
                "email": email,
                "password": password,
                "next": "//evil.example/",
                "csrf_token": form_token(form.text),
            },
        )
        assert answer.headers["location"] == "/dashboard/"


class TestRefusals:
    async def test_every_page_sends_a_stranger_to_the_login_form(
        self, dashboard: httpx.AsyncClient
    ) -> None:
        pages = dashboard_pages()
        assert "/dashboard/" in pages
        for path in pages:
            answer = await dashboard.get(re.sub(r"\{[^}]+\}", "x", path))
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/dashboard/login?next=")

    async def test_an_api_key_does_not_open_the_dashboard(
        self,
        dashboard: httpx.AsyncClient,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        async with db_sessionmaker() as session:
            _, key = await auth_service.create_api_key(session, "clinic")
            await session.commit()
        answer = await dashboard.get("/dashboard/", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 303

    async def test_a_session_cookie_does_not_open_the_api(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("admin")
        await log_in(dashboard, email, password)
        cookie = dashboard.cookies[SESSION_COOKIE]
        answer = await dashboard.get(
            "/v1/templates", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
        )
        assert answer.status_code == 401

    async def test_a_forged_cookie_is_no_session(self, dashboard: httpx.AsyncClient) -> None:
        dashboard.cookies.set(
            SESSION_COOKIE, "Zm9yZ2Vk.AAAAAAAAAAAAAAAAAAAAAAAA", path="/dashboard"
        )
        assert (await dashboard.get("/dashboard/")).status_code == 303

    async def test_tokens_beyond_ascii_are_refused_not_a_500(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        # Found auditing issue 11: hmac.compare_digest raises TypeError for a str with
        # a character beyond ASCII, in a cookie, a form token or a callback token.
        cookie = f"{SESSION_COOKIE}=Zm9yZ2Vk.\u00e9".encode()
        assert (await dashboard.get("/dashboard/", headers={"Cookie": cookie})).status_code == 303
        await dashboard.get("/dashboard/login")
        email, password = await make_operator("viewer")
        for token in ("Zm9yZ2Vk.\u00e9", "\u00e9"):
            answer = await dashboard.post(
                "/dashboard/login", data={"email": email, "password": password, "csrf_token": token}
            )
            assert answer.status_code == 403, token
        await log_in(dashboard, email, password)
        answer = await dashboard.post("/dashboard/logout", data={"csrf_token": "\u00e9"})
        assert answer.status_code == 403

    async def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        await log_in(dashboard, email, password)
        page = await dashboard.get("/dashboard/")
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": form_token(page.text) + "x"}):
            answer = await dashboard.post("/dashboard/logout", data=data)
            assert answer.status_code == 403, data
        assert (await dashboard.get("/dashboard/")).status_code == 200, "still logged in"

    async def test_a_cross_site_post_is_refused_even_with_the_token(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        await log_in(dashboard, email, password)
        token = form_token((await dashboard.get("/dashboard/")).text)
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            answer = await dashboard.post(
                "/dashboard/logout", data={"csrf_token": token}, headers=headers
            )
            assert answer.status_code == 403, headers
        answer = await dashboard.post("/dashboard/logout", data={"csrf_token": token})
        assert answer.status_code == 303

    async def test_the_login_form_needs_its_own_token(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        await dashboard.get("/dashboard/login")
        for data in ({}, {"csrf_token": "forged"}):
            answer = await dashboard.post(
                "/dashboard/login", data={"email": email, "password": password, **data}
            )
            assert answer.status_code == 403, data
        # A token from another browser's form does not match this browser's nonce.
        other_form = await dashboard.get("/dashboard/login")
        token = form_token(other_form.text)
        await dashboard.get("/dashboard/login")  # a fresh nonce for this browser
        answer = await dashboard.post(
            "/dashboard/login", data={"email": email, "password": password, "csrf_token": token}
        )
        assert answer.status_code == 403


class TestSessions:
    async def test_logging_out_ends_the_session_for_good(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        await log_in(dashboard, email, password)
        cookie = dashboard.cookies[SESSION_COOKIE]
        token = form_token((await dashboard.get("/dashboard/")).text)
        assert (
            await dashboard.post("/dashboard/logout", data={"csrf_token": token})
        ).status_code == 303
        # The old cookie, replayed, opens nothing: the session row is revoked.
        dashboard.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
        assert (await dashboard.get("/dashboard/")).status_code == 303

    async def test_revoking_an_operator_ends_their_live_sessions(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        email, password = await make_operator("support")
        await log_in(dashboard, email, password)
        assert (await dashboard.get("/dashboard/")).status_code == 200
        async with db_sessionmaker() as session:
            assert await operator_service.disable_operator(session, email) == 1
            await session.commit()
        assert (await dashboard.get("/dashboard/")).status_code == 303
