"""Health and metrics, for load balancers and Prometheus (no API key: no data)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="PostgreSQL and Redis are reachable",
    description="503 when PostgreSQL or Redis is unreachable. `channels` lists the "
    "configured channels and the CHANNEL_CHAINS steps whose channel is not configured "
    "(skipped when sending; informational, readiness does not depend on it).",
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}

    async def database() -> None:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def redis() -> None:
        await request.app.state.redis.ping()

    for name, check in (("database", database), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=2)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports any failure, whatever its kind
            log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
            checks[name] = "unreachable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {
            "status": "ok" if ready else "unavailable",
            **checks,
            "channels": request.app.state.chains.as_json(),
        },
        200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
