"""create_app(): the HTTP API. The lifespan builds the engine, Redis and arq pools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq import create_pool
from fastapi import APIRouter, Depends, FastAPI
from redis.exceptions import RedisError

from app import observability
from app.api_docs import install_api_docs
from app.appointments import endpoints as appointment_endpoints
from app.auth.dependencies import require_api_key
from app.broadcasts import endpoints as broadcast_endpoints
from app.callbacks import endpoints as callback_endpoints
from app.config import Settings, get_settings
from app.conversations import endpoints as conversation_endpoints
from app.dashboard.endpoints import install_dashboard
from app.db.session import create_engine_and_sessionmaker
from app.delivery.dispatcher import check_chains
from app.delivery.report_batcher import ReportBatcher
from app.email import endpoints as email_endpoints
from app.errors import install_error_handlers
from app.events import endpoints as event_endpoints
from app.experiments import endpoints as experiment_endpoints
from app.gateways import endpoints as gateway_endpoints
from app.gc_tuning import tune_gc
from app.groups import endpoints as group_endpoints
from app.imo import endpoints as imo_endpoints
from app.logs import configure_logging
from app.notifications import endpoints as notification_endpoints
from app.openapi import install_openapi, operation_id
from app.ops import endpoints as ops_endpoints
from app.patients import endpoints as patient_endpoints
from app.redis import RedisUnreachable, redis_location, redis_settings
from app.reminder_plans import endpoints as reminder_plan_endpoints
from app.request_size import RequestSizeLimit
from app.request_text import RefuseUnstorableText
from app.response_headers import ResponseHeaders
from app.staff import endpoints as staff_endpoints
from app.switches import endpoints as switch_endpoints
from app.templates import endpoints as template_endpoints
from app.webhooks import endpoints as webhook_endpoints

API_DESCRIPTION = """
Reminds patients of their clinic visits over Imo, WhatsApp and SMS.

Every `/v1` route needs `Authorization: Bearer <api key>` (create one with
`notify api-keys create NAME`). Errors are JSON:
`{"error": {"code", "message", "details": [{"field", "message"}]}}`.
Every error an operation can answer is declared with that shape (`ErrorResponse`).
Lists are paginated with an opaque `cursor`; times are ISO 8601 with an offset; phone
numbers are E.164. Operation ids (`schedule_notification`, `get_patient`, ...) are short
and stable: generated clients name their calls by them.
"""


def v1_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    router.include_router(patient_endpoints.router)
    router.include_router(notification_endpoints.router)
    router.include_router(template_endpoints.router)
    router.include_router(appointment_endpoints.router)
    router.include_router(reminder_plan_endpoints.router)
    router.include_router(experiment_endpoints.router)
    router.include_router(imo_endpoints.router)
    router.include_router(event_endpoints.router)
    router.include_router(group_endpoints.router)
    router.include_router(broadcast_endpoints.router)
    router.include_router(gateway_endpoints.router)
    router.include_router(conversation_endpoints.router)
    router.include_router(conversation_endpoints.patient_router)
    router.include_router(switch_endpoints.router)
    router.include_router(staff_endpoints.router)
    router.include_router(webhook_endpoints.router)
    router.include_router(email_endpoints.router)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    observability.init_sentry(settings, component="api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url)
        # Bounded: a Redis gone for good fails the start with its address, instead of
        # arq's and redis-py's retries holding it (and SIGTERM) for minutes.
        try:
            arq_pool = await asyncio.wait_for(
                create_pool(redis_settings(settings.redis_url)),
                settings.redis_start_timeout_seconds,
            )
        except (TimeoutError, OSError, RedisError) as exc:
            raise RedisUnreachable(
                f"Redis unreachable at {redis_location(settings.redis_url)}"
            ) from exc
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.redis = arq_pool
        app.state.chains = check_chains(settings)
        # Provider reports are committed in groups; see app/delivery/report_batcher.py.
        app.state.report_batcher = ReportBatcher(lambda: app.state.sessionmaker)
        app.state.report_batcher.start()
        tune_gc()
        try:
            yield
        finally:
            await app.state.report_batcher.stop()
            await arq_pool.aclose()
            await engine.dispose()

    app = FastAPI(
        title="clinic-notify",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # API_DOCS=false hides the interactive docs and the document behind them.
        openapi_url="/openapi.json" if settings.api_docs else None,
        generate_unique_id_function=operation_id,
    )
    install_openapi(app)
    if settings.api_docs:
        install_api_docs(app)
    install_error_handlers(app)
    observability.install_http_metrics(app)
    app.add_middleware(
        RequestSizeLimit,
        max_bytes=settings.max_request_bytes,
        # An inbound email is streamed to a file, never held whole (app/email/sendgrid.py).
        larger={email_endpoints.INBOUND_PARSE_PATH: settings.email_inbound_max_bytes},
    )
    app.add_middleware(RefuseUnstorableText)
    app.add_middleware(ResponseHeaders, hsts=settings.is_production)
    # Provider callbacks are the busiest routes: matched first, they skip trying every
    # /v1 route's pattern (an eighth of a callback's CPU). Paths do not overlap.
    app.include_router(callback_endpoints.router)
    app.include_router(email_endpoints.callback_router)
    app.include_router(ops_endpoints.router)
    # cht-gateway phones poll here with HTTP Basic auth (their own, not an API key).
    app.include_router(gateway_endpoints.phone_router)
    app.include_router(v1_router())
    install_dashboard(app)
    return app
