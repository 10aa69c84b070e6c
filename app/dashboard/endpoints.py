"""Dashboard pages: login and logout, then the pages an operator reads."""

from __future__ import annotations

import inspect
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.conversations import service as conversation_service
from app.dashboard import repository as dashboard_repository
from app.dashboard import security
from app.dashboard import service as dashboard_service
from app.dashboard.rendering import render, static_files
from app.dashboard.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    DashboardBadInput,
    DashboardForbidden,
    LoginRequired,
    Operator,
)
from app.db.session import DbSession
from app.errors import AppError, validation_details
from app.experiments import service as experiment_service
from app.gateways import repository as gateway_repository
from app.imo import repository as imo_repository
from app.imo import service as imo_service
from app.models import Patient
from app.operators import service as operator_service
from app.operators.service import SignedIn
from app.patients import service as patient_service
from app.states import ChannelName
from app.switches import service as switch_service
from app.switches.scope import ScopeError, parse_scope
from app.webhooks import service as webhook_service
from app.webhooks.events import EVENT_TYPES
from app.webhooks.schemas import NAME_PATTERN, ReplayIn

# Every form is held to the API's rules for text before any of its fields is used.
router = APIRouter(
    prefix="/dashboard",
    include_in_schema=False,
    dependencies=[Depends(security.check_form_text)],
)
HOME = "/dashboard/"
log = logging.getLogger(__name__)


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


RANGES = {"1": "last 24 hours", "7": "last 7 days", "30": "last 30 days", "90": "last 90 days"}


@router.get("/")
async def overview(
    request: Request,
    session: DbSession,
    signed: Operator,
    days: Annotated[Literal["1", "7", "30", "90"], Query()] = "7",
    country: Annotated[str | None, Query(max_length=2)] = None,
    purpose: Annotated[str | None, Query(max_length=50)] = None,
) -> Response:
    now = datetime.now(UTC)
    until = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = until - timedelta(days=int(days))
    figures = await dashboard_service.overview(
        session, since, until, country=country or None, purpose=purpose or None
    )
    return render(
        request,
        "overview.html",
        signed,
        active="overview",
        figures=figures,
        ranges=RANGES,
        days=days,
        country=country or "",
        purpose=purpose or "",
        steps=(*dashboard_service.STEPS, *dashboard_service.PROBLEMS),
    )


def masked(phone_e164: str | None) -> str:
    """A number as a viewer sees it: the country code and the last two digits."""
    if not phone_e164:
        return ""
    return phone_e164[:4] + "•" * max(len(phone_e164) - 6, 0) + phone_e164[-2:]


@router.get("/patients")
async def patient_lookup(
    request: Request,
    session: DbSession,
    signed: Operator,
    q: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """By id (straight to the patient) or by phone number in international form."""
    q = q.strip()
    error = None
    if q and (q.startswith("+") or q.isdigit()):
        try:
            page = await patient_service.search(
                session,
                number=q,
                country=None,
                facility_id=None,
                name_prefix=None,
                limit=20,
                cursor=None,
            )
        except AppError as refused:
            error = refused.message
        else:
            if len(page.patients) == 1:
                return RedirectResponse(f"/dashboard/patients/{page.patients[0][0].id}", 303)
            error = (
                f"{len(page.patients)} patients share this number: search by id"
                if page.patients
                else "no patient has this number"
            )
    elif q:
        if await session.get(Patient, q) is not None:
            return RedirectResponse(f"/dashboard/patients/{quote(q, safe='')}", 303)
        error = "no patient has this id"
    return render(request, "patients.html", signed, active="patients", q=q, error=error)


PATIENT_PAGE = 50


@router.get("/patients/{patient_id}")
async def patient_page(
    request: Request,
    session: DbSession,
    signed: Operator,
    patient_id: str,
    sent: Annotated[
        str | None, Query(max_length=500, description="cursor of messages sent")
    ] = None,
    exchange: Annotated[
        str | None, Query(max_length=500, description="cursor of messages both ways")
    ] = None,
) -> Response:
    """The patient, their messages sent and their messages both ways, newest first,
    PATIENT_PAGE of each at a time: `sent` and `exchange` are the cursors of the older
    pages (the API's), each list paged on its own back to the first message."""
    try:
        patient, authorization = await patient_service.get_patient_with_authorization(
            session, patient_id
        )
    except AppError:
        return render(
            request,
            "patients.html",
            signed,
            status_code=404,
            active="patients",
            q=patient_id,
            error="no patient has this id",
        )
    try:
        history = await patient_service.notifications_of(
            session, patient_id, limit=PATIENT_PAGE, cursor=sent
        )
        messages, older_exchange = await conversation_service.patient_messages(
            session, patient_id, exchange, PATIENT_PAGE
        )
    except AppError:
        return render(
            request,
            "patients.html",
            signed,
            status_code=400,
            active="patients",
            q=patient_id,
            error="this link to older messages is broken: open the patient again",
        )
    shows_phone = operator_service.role_allows(signed.operator.role, "support")
    return render(
        request,
        "patient.html",
        signed,
        active="patients",
        patient=patient,
        authorization=authorization,
        phone=patient.mobile_e164 if shows_phone else masked(patient.mobile_e164),
        shows_phone=shows_phone,
        history=history,
        messages=[message for message, _ in messages],
        sent=sent,
        exchange=exchange,
        older_sent=_page_link(history.next_cursor, exchange) if history.next_cursor else None,
        older_exchange=_page_link(sent, older_exchange) if older_exchange else None,
        page_size=PATIENT_PAGE,
    )


def _page_link(sent: str | None, exchange: str | None) -> str:
    """The query of the patient page at these two cursors."""
    return "?" + urlencode({k: v for k, v in (("sent", sent), ("exchange", exchange)) if v})


PAUSE_NAMES = {
    "window": "messaging window",
    "switch": "switch",
    "errors": "errors",
    "rate_limit": "rate limit",
}
ACCEPTANCE_SPANS = {"day": timedelta(days=30), "week": timedelta(weeks=26)}
REFRESH_SECONDS = 5


@router.get("/imo")
async def imo_invitations(
    request: Request,
    session: DbSession,
    signed: Operator,
    by: Annotated[Literal["day", "week"], Query()] = "day",
) -> Response:
    """The latest rounds with their progress (as GET /v1/imo/invitation-rounds/{id}) and
    why they paused, acceptance over time, and the authorisation counts (as GET
    /v1/imo/authorizations/summary). Reloads itself while a round runs."""
    now = datetime.now(UTC)
    rounds = [
        progress
        for round_id in await dashboard_repository.recent_round_ids(session, 20)
        if (progress := await imo_service.round_progress(session, round_id, now)) is not None
    ]
    pauses = await imo_repository.round_pauses(session, [r.id for r in rounds], per_round=5)
    total, by_status = await imo_service.authorization_summary(session)
    until = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    pattern = "%Y-%m-%d" if by == "day" else "week of %Y-%m-%d"
    acceptance = [
        (period.strftime(pattern), invited, subscribed)
        for period, invited, subscribed in await imo_repository.acceptance(
            session, until - ACCEPTANCE_SPANS[by], until, by
        )
    ]
    return render(
        request,
        "imo.html",
        signed,
        active="imo",
        rounds=rounds,
        pauses=pauses,
        pause_names=PAUSE_NAMES,
        running=any(r.state != "completed" for r in rounds),
        refresh_seconds=REFRESH_SECONDS,
        acceptance=acceptance,
        by=by,
        patients=total,
        by_status=list(by_status.items()),
    )


@router.get("/experiments")
async def experiments(request: Request, session: DbSession, signed: Operator) -> Response:
    page = await experiment_service.list_experiments(session, limit=100, cursor=None)
    return render(
        request,
        "experiments.html",
        signed,
        active="experiments",
        experiments=[experiment for experiment, _ in page.experiments],
    )


@router.get("/experiments/{experiment_id}")
async def experiment(
    request: Request, session: DbSession, signed: Operator, experiment_id: uuid.UUID
) -> Response:
    """The same numbers as GET /v1/experiments/{id}/results: the same service call."""
    try:
        results = await experiment_service.results(session, experiment_id)
    except AppError as refused:
        return render(request, "forbidden.html", signed, status_code=404, message=refused.message)
    rate_rows = [(g.name, g.return_rate, g.return_rate_ci95) for g in results.groups]
    return render(
        request,
        "experiment.html",
        signed,
        active="experiments",
        results=results,
        rate_rows=rate_rows,
    )


CHANNEL_NAMES = [channel.value for channel in ChannelName]
Admin = Annotated[SignedIn, Depends(security.require_role("admin"))]


@router.get("/switches")
async def switches(
    request: Request, session: DbSession, signed: Admin, done: str | None = None
) -> Response:
    return render(
        request,
        "switches.html",
        signed,
        active="switches",
        switches=await switch_service.list_switches(session),
        done=done,
        channels=CHANNEL_NAMES,
    )


@router.post("/switches")
async def put_switch(
    request: Request,
    session: DbSession,
    signed: Admin,
    action: Annotated[Literal["pause", "resume"], Form()],
    reason: Annotated[str, Form(min_length=1, max_length=1000)],
    country: Annotated[str, Form(max_length=2)] = "",
    channel: Annotated[str, Form(max_length=20)] = "",
    purpose: Annotated[str, Form(max_length=50)] = "",
) -> Response:
    """Pause or resume a scope, as PUT /v1/switches/{scope}, by this operator (logged by
    the switches service with their email)."""
    parts = {"country": country.strip(), "channel": channel.strip(), "purpose": purpose.strip()}
    text = ",".join(f"{key}={value}" for key, value in parts.items() if value) or "all"
    try:
        scope = parse_scope(text)
        if not reason.strip():
            raise ScopeError("a reason is required")
    except ScopeError as refused:
        return render(
            request,
            "switches.html",
            signed,
            status_code=422,
            active="switches",
            switches=await switch_service.list_switches(session),
            error=str(refused),
            channels=CHANNEL_NAMES,
        )
    _, released = await switch_service.put_switch(
        session,
        scope,
        paused=action == "pause",
        reason=reason.strip(),
        by=signed.operator.email,
        now=datetime.now(UTC),
    )
    done = f"{'paused' if action == 'pause' else 'resumed'} {scope}"
    if action == "resume":
        done += f"; {released} held notifications released"
    return RedirectResponse(f"/dashboard/switches?{urlencode({'done': done})}", 303)


@router.get("/gateways")
async def gateways(request: Request, session: DbSession, signed: Operator) -> Response:
    """The gateway phones as GET /v1/gateways: the same repository call."""
    stats = await gateway_repository.list_with_stats(session)
    return render(
        request,
        "gateways.html",
        signed,
        active="gateways",
        gateways=stats,
        queue_rows=[(s.gateway.name, s.queue_depth) for s in stats],
        now=datetime.now(UTC),
    )


FAILING_SHOWN = 50


async def _webhooks_page(
    request: Request,
    session: DbSession,
    signed: SignedIn,
    *,
    done: str | None = None,
    error: str | None = None,
    details: list[dict[str, Any]] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "webhooks.html",
        signed,
        status_code=status_code,
        active="webhooks",
        endpoints=await dashboard_repository.webhooks(session),
        failing=await dashboard_repository.failing_deliveries(session, FAILING_SHOWN),
        failing_shown=FAILING_SHOWN,
        event_types=EVENT_TYPES,
        may_replay=operator_service.role_allows(signed.operator.role, "admin"),
        done=done,
        error=error,
        details=details or [],
    )


@router.get("/webhooks")
async def webhooks(
    request: Request,
    session: DbSession,
    signed: Operator,
    done: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    return await _webhooks_page(request, session, signed, done=done)


def _utc(value: str) -> str:
    # A datetime-local input has no offset: the form says its times are UTC.
    value = value.strip()
    if value and not value.endswith("Z") and "+" not in value[10:] and "-" not in value[10:]:
        return value + "Z"
    return value


@router.post("/webhooks/{name}/replay")
async def replay_webhook(
    request: Request,
    session: DbSession,
    signed: Admin,
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    since: Annotated[str, Form(max_length=40)],
    until: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=1000)],
    events: Annotated[list[str] | None, Form(max_length=20)] = None,
) -> Response:
    """Deliver an endpoint's events of a period again, as POST /v1/webhooks/{name}/replay
    (the same body rules, the same service call), by an admin giving a reason; logged."""
    try:
        body = ReplayIn.model_validate(
            {"since": _utc(since), "until": _utc(until), "events": events or None}
        )
    except ValidationError as refused:
        details = validation_details(refused.errors())
        return await _webhooks_page(
            request,
            session,
            signed,
            status_code=422,
            error="the replay was not queued: check its period and events",
            details=details,
        )
    if not reason.strip():
        return await _webhooks_page(
            request, session, signed, status_code=422, error="a reason is required"
        )
    try:
        queued = await webhook_service.replay(session, name, body.since, body.until, body.events)
    except AppError as refused:
        return await _webhooks_page(
            request, session, signed, status_code=refused.status_code, error=refused.message
        )
    await session.commit()
    log.warning(
        "webhook replay queued from the dashboard",
        extra={
            "by": signed.operator.email,
            "endpoint": name,
            "since": body.since.isoformat(),
            "until": body.until.isoformat(),
            "events": body.events or "all",
            "queued": queued,
            "reason": reason.strip(),
        },
    )
    done = f"{queued:,} deliveries to {name} queued again"
    return RedirectResponse(f"/dashboard/webhooks?{urlencode({'done': done})}", 303)


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

    @app.exception_handler(DashboardBadInput)
    async def _bad_input(request: Request, refused: DashboardBadInput) -> Response:
        return _refused_page(request, refused.status_code, refused.message, [])

    # The API's answers to a bad request stay JSON; the dashboard's are pages.
    api_invalid = app.exception_handlers[RequestValidationError]
    api_http = app.exception_handlers[StarletteHTTPException]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not _is_dashboard(request):
            return await _delegate(api_invalid, request, exc)
        details = validation_details(exc.errors())
        return _refused_page(request, 422, "the form or address has values it cannot take", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if not _is_dashboard(request) or exc.status_code < 400 or exc.status_code >= 500:
            return await _delegate(api_http, request, exc)
        return _refused_page(request, exc.status_code, str(exc.detail), [])


async def _delegate(handler: Any, request: Request, exc: Exception) -> Response:
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer  # type: ignore[no-any-return]


def _is_dashboard(request: Request) -> bool:
    return request.url.path == "/dashboard" or request.url.path.startswith("/dashboard/")


def _refused_page(
    request: Request, status_code: int, message: str, details: list[dict[str, Any]]
) -> Response:
    # No operator looked up: the page must not fail where the request did.
    return render(
        request,
        "forbidden.html",
        None,
        status_code=status_code,
        message=message,
        details=details,
        heading="Not found" if status_code == 404 else "Refused",
    )
