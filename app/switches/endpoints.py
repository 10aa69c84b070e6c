"""HTTP for switches: pause and resume sending by country, channel, purpose."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.db.session import DbSession
from app.errors import field_error
from app.switches import service as switch_service
from app.switches.schemas import SwitchIn, SwitchListOut, SwitchOut, SwitchPutOut
from app.switches.scope import ScopeError, parse_scope

router = APIRouter(prefix="/switches", tags=["switches"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}

SCOPE_DESCRIPTION = (
    "`all`, or `key=value` parts joined by commas, keys `country` (two letters), "
    "`channel` (imo, whatsapp, sms) and `purpose`, each at most once, in any order: "
    "`country=IN`, `channel=whatsapp`, `country=IN,channel=whatsapp`, "
    "`country=BD,purpose=missed_visit`."
)


@router.put(
    "/{scope}",
    summary="Pause or resume sending in a scope",
    description="A paused scope holds every reminder it covers (of that country and "
    "purpose, about to go on that channel): each dispatcher stops sending them from its "
    "next batch on, and they wait `scheduled` (a paused channel is not skipped for the "
    "next one: the experiment's channel mix stays as planned). Resuming makes them due at "
    "once; a reminder still held at its expiry ends `expired` as usual. Imo invitation "
    "rounds stop for `all` and `channel=imo`. The scope is stored, and answered, in one "
    "canonical spelling. 422 for a scope that does not parse. " + SCOPE_DESCRIPTION,
    responses={**_ERRORS, 422: {"description": "The scope or the body is not valid"}},
)
async def put_switch(
    scope: Annotated[str, Path(max_length=200, description=SCOPE_DESCRIPTION)],
    body: SwitchIn,
    session: DbSession,
) -> SwitchPutOut:
    try:
        parsed = parse_scope(scope)
    except ScopeError as exc:
        raise field_error("scope", str(exc)) from exc
    switch, released = await switch_service.put_switch(
        session, parsed, paused=body.paused, reason=body.reason, by=body.by, now=datetime.now(UTC)
    )
    await session.commit()
    return SwitchPutOut(**SwitchOut.of(switch).model_dump(), released=released)


@router.get(
    "",
    summary="Every switch: paused or resumed, who changed it last, when and why",
    responses=_ERRORS,
)
async def list_switches(session: DbSession) -> SwitchListOut:
    return SwitchListOut(
        data=[SwitchOut.of(s) for s in await switch_service.list_switches(session)]
    )
