"""SQL for templates."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Template


@dataclass(frozen=True, slots=True)
class TemplateText:
    key: str
    locale: str
    title: str
    body: str


# Every scheduled message reads one: its columns, not an ORM entity (no identity map,
# no instance state to build).
_TEXTS_FOR_LOCALES = text(
    "SELECT key, locale, title, body FROM templates"
    " WHERE key = :key AND locale = ANY(CAST(:locales AS text[]))"
)


async def find_for_locales(
    session: AsyncSession, key: str, locales: Sequence[str]
) -> list[TemplateText]:
    """The text of template `key` in any of `locales`, in the order of `locales`."""
    rows = await session.execute(_TEXTS_FOR_LOCALES, {"key": key, "locales": list(locales)})
    order = {locale: position for position, locale in enumerate(locales)}
    return sorted((TemplateText(*row) for row in rows), key=lambda template: order[template.locale])


async def with_keys(session: AsyncSession, keys: Collection[str]) -> Sequence[Template]:
    """Every locale's text of each of `keys`."""
    return (await session.scalars(select(Template).where(Template.key.in_(keys)))).all()


async def upsert(
    session: AsyncSession,
    key: str,
    locale: str,
    title: str,
    body: str,
    whatsapp: dict[str, Any] | None = None,
) -> Template:
    statement = (
        insert(Template)
        .values(key=key, locale=locale, title=title, body=body, whatsapp=whatsapp)
        .on_conflict_do_update(
            index_elements=[Template.key, Template.locale],
            set_={"title": title, "body": body, "whatsapp": whatsapp, "updated_at": func.now()},
        )
        .returning(Template)
    )
    return (await session.scalars(statement, execution_options={"populate_existing": True})).one()


async def get(session: AsyncSession, key: str, locale: str) -> Template | None:
    return await session.scalar(
        select(Template).where(Template.key == key, Template.locale == locale)
    )


async def list_all(session: AsyncSession) -> Sequence[Template]:
    """Every template by key and locale: a table of a few dozen rows."""
    return (await session.scalars(select(Template).order_by(Template.key, Template.locale))).all()
