"""HTTP for gateway phones: registering them (/v1/gateways) and cht-gateway's own
endpoint (/gateway/api/sms), which answers as cht-core does: `{"error": true,
"message": ...}` for every failure."""

from __future__ import annotations

import binascii
import gzip
from base64 import b64decode
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, status
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.db.session import DbSession
from app.gateways import protocol
from app.gateways import repository as gateway_repository
from app.gateways import service as gateway_service
from app.gateways.schemas import GatewayCreated, GatewayIn, GatewayList, GatewayOut
from app.models import Gateway

router = APIRouter(prefix="/gateways", tags=["gateways"])
phone_router = APIRouter(prefix="/gateway/api", include_in_schema=False)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}


def _out(stats: gateway_repository.GatewayStats) -> dict[str, Any]:
    g = stats.gateway
    return {
        "id": g.id,
        "name": g.name,
        "country": g.country,
        "number": g.number,
        "created_at": g.created_at,
        "last_polled_at": g.last_polled_at,
        "queue_depth": stats.queue_depth,
        "counts": stats.counts,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a gateway phone",
    description="Its `secret` (the password to set in cht-gateway) is answered only here.",
    responses={**_ERRORS, 409: {"description": "A gateway of that name exists"}},
)
async def create_gateway(session: DbSession, body: GatewayIn) -> GatewayCreated:
    gateway, secret = await gateway_service.create_gateway(
        session, body.name, body.country, body.number
    )
    await session.commit()
    await session.refresh(gateway)
    stats = gateway_repository.GatewayStats(gateway, 0, {})
    return GatewayCreated(**_out(stats), secret=secret)


@router.get(
    "",
    summary="List the gateway phones",
    description="Each with its last poll, its queue depth and its messages by state.",
    responses=_ERRORS,
)
async def list_gateways(session: DbSession) -> GatewayList:
    stats = await gateway_repository.list_with_stats(session)
    return GatewayList(data=[GatewayOut(**_out(s)) for s in stats])


# Answers shorter than this go uncompressed: gzip's own header and trailer would make
# them longer.
GZIP_MIN_BYTES = 256


def _accepts_gzip(request: Request) -> bool:
    """`Accept-Encoding` names gzip (as Android's HTTP client, hence cht-gateway, always
    does), and not with `q=0`."""
    for coding in request.headers.get("accept-encoding", "").split(","):
        name, *params = (part.strip() for part in coding.split(";"))
        if name.lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def _json(
    request: Request,
    content: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON answer, gzip-encoded when the phone accepts it and it is worth it."""
    body = orjson.dumps(content)
    headers = {**(headers or {}), "Vary": "Accept-Encoding"}
    if len(body) >= GZIP_MIN_BYTES and _accepts_gzip(request):
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code, headers=headers, media_type="application/json")


def _error(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return _json(request, {"error": True, "message": message}, status_code, headers)


def _credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return None
    try:
        decoded = raw.decode()
    except UnicodeDecodeError:
        # cht-gateway encodes its user and password as ISO-8859-1 (SimpleJsonClient2).
        decoded = raw.decode("latin-1")
    name, colon, secret = decoded.partition(":")
    return (name, secret) if colon else None


async def _gateway(request: Request, session: DbSession) -> Gateway | None:
    credentials = _credentials(request)
    if credentials is None:
        return None
    return await gateway_service.authenticate(session, *credentials)


_UNAUTHORIZED = {"WWW-Authenticate": 'Basic realm="clinic-notify gateway"'}


@phone_router.get("/sms")
async def gateway_hello(request: Request, session: DbSession) -> Response:
    """cht-gateway's settings check."""
    if await _gateway(request, session) is None:
        return _error(request, 401, "wrong gateway name or secret", _UNAUTHORIZED)
    return _json(request, {"medic-gateway": True})


@phone_router.post("/sms")
async def gateway_poll(request: Request, session: DbSession) -> Response:
    """cht-gateway's poll: the SMS it received and its statuses in, messages to send out."""
    gateway = await _gateway(request, session)
    if gateway is None:
        return _error(request, 401, "wrong gateway name or secret", _UNAUTHORIZED)
    max_bytes = request.app.state.settings.max_request_bytes
    try:
        raw = await request.body()
    except HTTPException as error:
        return _error(request, error.status_code, str(error.detail))
    try:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            raw = protocol.decompress(raw, max_bytes)
        elif encoding not in ("", "identity"):
            return _error(request, 415, f"unsupported Content-Encoding {encoding!r}")
        received = protocol.parse_poll(raw)
    except protocol.BodyTooLarge as error:
        return _error(request, 413, str(error))
    except protocol.ProtocolError as error:
        return _error(request, 400, str(error))
    offered = await gateway_service.poll(
        session, request.app.state.settings, gateway, received, datetime.now(UTC)
    )
    await session.commit()
    return _json(
        request, {"messages": [{"id": m.id, "to": m.to, "content": m.content} for m in offered]}
    )
