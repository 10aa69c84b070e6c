"""Template rules: which text a patient gets, and rendering it with its variables.

A template names its variables as `{name}`; rendering checks them at scheduling time,
so a missing template or variable is a 422 then, never a failure at sending time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidInput, NotFound, field_error
from app.models import Template
from app.templates import repository as template_repository
from app.templates.placeholders import variables_of

FALLBACK_LOCALE = "en"
# A title is a heading (Imo's `title`); a long variable must not overflow it.
MAX_TITLE_LENGTH = 200


@dataclass(slots=True)  # not frozen: an invitation round renders one per patient
class RenderedTemplate:
    key: str
    locale: str
    title: str
    body: str


def locale_candidates(locale: str) -> list[str]:
    """bn-BD -> [bn-BD, bn, en]: the patient's locale, its language, then English."""
    candidates = [locale]
    language = locale.split("-")[0]
    if language != locale:
        candidates.append(language)
    if FALLBACK_LOCALE not in candidates:
        candidates.append(FALLBACK_LOCALE)
    return candidates


async def list_templates(session: AsyncSession) -> Sequence[Template]:
    return await template_repository.list_all(session)


async def get_template(session: AsyncSession, key: str, locale: str) -> Template:
    """Raises NotFound."""
    template = await template_repository.get(session, key, locale)
    if template is None:
        raise NotFound(f"no template '{key}' in locale '{locale}'")
    return template


async def put_template(
    session: AsyncSession,
    key: str,
    locale: str,
    title: str,
    body: str,
    whatsapp: dict[str, Any] | None = None,
) -> Template:
    """Create or replace the text of `key` in `locale`, and the WhatsApp template it is
    sent as (all checked by the schema; None: not sent on WhatsApp). Flushes."""
    return await template_repository.upsert(session, key, locale, title, body, whatsapp)


async def render(
    session: AsyncSession, key: str, locale: str, variables: dict[str, Any]
) -> RenderedTemplate:
    """Render template `key` for `locale` (falling back to `en`).

    Raises InvalidInput naming `template` or `variables.<name>`.
    """
    templates = await template_repository.find_for_locales(session, key, locale_candidates(locale))
    if not templates:
        raise field_error("template", f"no template '{key}' for locale '{locale}' or 'en'")
    template = templates[0]
    return render_text(template.key, template.locale, template.title, template.body, variables)


def render_text(
    key: str, locale: str, title: str, body: str, variables: dict[str, Any]
) -> RenderedTemplate:
    return PreparedTemplate.parse(key, locale, title, body).render(variables)


@dataclass(frozen=True, slots=True)
class PreparedTemplate:
    """A template's texts parsed once, to be rendered many times (an invitation round)."""

    key: str
    locale: str
    title: str
    body: str
    needed: frozenset[str]

    @classmethod
    def parse(cls, key: str, locale: str, title: str, body: str) -> PreparedTemplate:
        """Raises ValueError for a malformed text."""
        return cls(key, locale, title, body, frozenset(variables_of(body) | variables_of(title)))

    def render(self, variables: dict[str, Any]) -> RenderedTemplate:
        """Raises InvalidInput naming the variables missing from `variables`."""
        if not self.needed.issubset(variables):
            missing = sorted(self.needed - variables.keys())
            raise InvalidInput(
                f"template '{self.key}' needs variables: {', '.join(missing)}",
                details=[{"field": f"variables.{name}", "message": "required"} for name in missing],
            )
        values = {name: str(variables[name]) for name in self.needed}
        title = self.title.format_map(values)
        if len(title) > MAX_TITLE_LENGTH:
            title = title[: MAX_TITLE_LENGTH - 1] + "…"
        return RenderedTemplate(self.key, self.locale, title, self.body.format_map(values))
