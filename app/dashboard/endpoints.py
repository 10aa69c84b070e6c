"""Dashboard pages: login and logout, then the pages an operator reads."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.dashboard import security
from app.dashboard.rendering import render, static_files
from app.dashboard.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    DashboardForbidden,
    LoginRequired,
    Operator,
)
from app.db.session import DbSession
from app.operators import service as operator_service

router = APIRouter(prefix="/dashboard", include_in_schema=False)
HOME = "/dashboard/"


def _safe_next(next_path: str) -> str:
    # Only a dashboard path: never an open redirect to another site.
    if next_path.startswith("/dashboard/") and not next_path.startswith("//"):
        return next_path
    return HOME


def _login_page(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    token, nonce = security.login_csrf(request)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        csrf_token=token,
        next=_safe_next(next_path),
        error=error,
    )
    security.set_cookie(request, response, LOGIN_COOKIE, nonce)
    return response


@router.get("/login")
async def login_form(request: Request, next: str = HOME) -> Response:
    return _login_page(request, next)


@router.post("/login", dependencies=[Depends(security.check_login_csrf)])
async def login(
    request: Request,
    session: DbSession,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form()] = HOME,
) -> Response:
    address = request.client.host if request.client else "unknown"
    try:
        _, token = await operator_service.log_in(
            session, request.app.state.redis, email, password, address
        )
    except (operator_service.LoginRefused, operator_service.TooManyLogins) as refused:
        return _login_page(request, next, refused.message, refused.status_code)
    response = RedirectResponse(_safe_next(next), status_code=303)
    security.set_session_cookie(request, response, token)
    response.delete_cookie(LOGIN_COOKIE, path=security.COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(session: DbSession, signed: Operator) -> Response:
    await operator_service.log_out(session, signed.session.id)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=security.COOKIE_PATH)
    return response


@router.get("/")
async def overview(request: Request, signed: Operator) -> Response:
    return render(request, "overview.html", signed)


def install_dashboard(app: FastAPI) -> None:
    """The dashboard's routes, static files and the answers to its refusals (HTML, not
    the API's JSON)."""
    app.include_router(router)
    app.mount("/dashboard/static", static_files, name="dashboard-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        target = HOME
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/dashboard/login?{urlencode({'next': target})}", 303)

    @app.exception_handler(DashboardForbidden)
    async def _forbidden(request: Request, refused: DashboardForbidden) -> Response:
        return render(request, "forbidden.html", None, status_code=403, message=refused.message)
