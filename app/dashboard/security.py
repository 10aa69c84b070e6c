"""Who is looking at the dashboard, and whether a form really came from it.

- The session cookie is the operator session's token signed with SECRET_KEY, HttpOnly,
  SameSite=Strict, Secure outside development; `/v1` never reads it (API keys only) and
  the dashboard never reads an `Authorization` header.
- Every POST carries a CSRF token bound to the session (an HMAC of its id), or before
  login to a nonce in a cookie of its own; a POST whose Origin or Sec-Fetch-Site says it
  came from another site is refused before anything else.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response

from app.db.session import DbSession
from app.operators import service as operator_service
from app.operators.service import SignedIn
from app.security import TokenSigner, same_text
from app.validation import check_storable

SESSION_COOKIE = "dashboard_session"
LOGIN_COOKIE = "dashboard_login"
COOKIE_PATH = "/dashboard"
_SESSION = "dashboard-session"
_CSRF = "dashboard-csrf"
_LOGIN_CSRF = "dashboard-login-csrf"


class LoginRequired(Exception):
    """No live session: the page answers with a redirect to the login form."""


class DashboardForbidden(Exception):
    """A live session whose role does not allow this, or a form that fails the CSRF check."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def signer(request: Request) -> TokenSigner:
    return TokenSigner(request.app.state.settings.secret_key.get_secret_value())


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or bool(request.app.state.settings.is_production)


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    set_cookie(request, response, SESSION_COOKIE, signer(request).sign(_SESSION, token))


def csrf_token(request: Request, signed: SignedIn) -> str:
    return signer(request).sign(_CSRF, str(signed.session.id))


def login_csrf(request: Request) -> tuple[str, str]:
    """(the login form's token, the nonce cookie it is bound to): a new pair per form."""
    nonce = secrets.token_urlsafe(16)
    return signer(request).sign(_LOGIN_CSRF, nonce), nonce


def refuse_cross_site(request: Request) -> None:
    """Raises DashboardForbidden for a request a browser says came from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise DashboardForbidden("cross-site request refused")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise DashboardForbidden("cross-site request refused")


class DashboardBadInput(Exception):
    """A form or query the dashboard cannot take: answered with a page saying why (4xx)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


async def check_form_text(request: Request) -> None:
    """A form's values held to the API's rules for text (app/validation.py: no null,
    control or bidi character, no lone surrogate) before any field reaches a query;
    files are not taken. Raises DashboardBadInput. (The query string and path are held
    to them by app/request_text.py for every route.)"""
    if request.method in ("GET", "HEAD"):
        return
    try:
        form = await request.form()
    except Exception as refused:  # a malformed body: multipart boundaries, too many parts
        raise DashboardBadInput(f"the form could not be read: {refused}", 400) from refused
    for name, value in form.multi_items():
        if not isinstance(value, str):
            raise DashboardBadInput(f"{name}: files are not taken here")
        try:
            check_storable(value, name)
            check_storable(name, "a field name")
        except ValueError as refused:
            raise DashboardBadInput(str(refused)) from refused


async def _form_token(request: Request) -> str:
    value = (await request.form()).get("csrf_token")
    return value if isinstance(value, str) else ""


async def check_login_csrf(request: Request) -> None:
    """Raises DashboardForbidden unless the login form's token matches its nonce cookie."""
    refuse_cross_site(request)
    nonce = signer(request).verify(_LOGIN_CSRF, await _form_token(request))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if nonce is None or not same_text(nonce, cookie):
        raise DashboardForbidden("the form has expired or did not come from this site: reload it")


async def current_operator(request: Request, session: DbSession) -> SignedIn:
    """The operator of the request's session cookie; raises LoginRequired. A POST must
    also carry the session's CSRF token (raises DashboardForbidden)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    token = signer(request).verify(_SESSION, cookie) if cookie else None
    signed = await operator_service.signed_in(session, token) if token else None
    if signed is None:
        raise LoginRequired
    if request.method not in ("GET", "HEAD"):
        refuse_cross_site(request)
        if not same_text(await _form_token(request), csrf_token(request, signed)):
            raise DashboardForbidden("the form did not come from this session: reload the page")
    request.state.operator_id = signed.operator.id
    return signed


def require_role(role: str) -> Callable[[SignedIn], Awaitable[SignedIn]]:
    async def dependency(
        signed: Annotated[SignedIn, Depends(current_operator)],
    ) -> SignedIn:
        if not operator_service.role_allows(signed.operator.role, role):
            raise DashboardForbidden(f"this needs the {role} role")
        return signed

    return dependency


Operator = Annotated[SignedIn, Depends(current_operator)]
