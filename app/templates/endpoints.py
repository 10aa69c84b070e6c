"""HTTP for templates: read them, and write one text per key and locale."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.db.session import DbSession
from app.templates import service as template_service
from app.templates.schemas import (
    TEMPLATE_KEY_PATTERN,
    Locale,
    TemplateIn,
    TemplateList,
    TemplateOut,
)

router = APIRouter(prefix="/templates", tags=["templates"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}

KeyPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=TEMPLATE_KEY_PATTERN,
        examples=["appointment_reminder.basic"],
    ),
]
LocalePath = Annotated[Locale, Path(examples=["bn-BD"])]


@router.get("", summary="Every template", responses=_ERRORS)
async def list_templates(session: DbSession) -> TemplateList:
    templates = await template_service.list_templates(session)
    return TemplateList(items=[TemplateOut.from_model(template) for template in templates])


@router.get(
    "/{key}/{locale}",
    summary="One template in one locale",
    responses={**_ERRORS, 404: {"description": "No such template in this locale"}},
)
async def get_template(key: KeyPath, locale: LocalePath, session: DbSession) -> TemplateOut:
    template = await template_service.get_template(session, key, locale)
    return TemplateOut.from_model(template)


@router.put(
    "/{key}/{locale}",
    summary="Create or replace a template's text in one locale",
    responses={
        **_ERRORS,
        422: {
            "description": "A placeholder that is not a plain `{name}` variable, or a "
            "WhatsApp parameter the template does not use"
        },
    },
)
async def upsert_template(
    key: KeyPath, locale: LocalePath, body: TemplateIn, session: DbSession
) -> TemplateOut:
    whatsapp = body.whatsapp.model_dump(exclude_none=True) if body.whatsapp else None
    template = await template_service.put_template(
        session, key, locale, body.title, body.body, whatsapp
    )
    return TemplateOut.from_model(template)
