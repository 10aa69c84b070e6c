"""Template rules: which text a patient gets, and rendering it with its variables.

A template names its variables as `{name}`; rendering checks them at scheduling time,
so a missing template or variable is a 422 then, never a failure at sending time.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidInput, field_error
from app.templates import repository as template_repository

FALLBACK_LOCALE = "en"
# A title is a heading (Imo's `title`); a long variable must not overflow it.
MAX_TITLE_LENGTH = 200
_FORMATTER = string.Formatter()


@dataclass(slots=True)  # not frozen: an invitation round renders one per patient
class RenderedTemplate:
    key: str
    locale: str
    title: str
    body: str


def variables_of(text: str) -> set[str]:
    """The `{names}` a text uses. Raises ValueError for a malformed text."""
    names: set[str] = set()
    for _, field_name, format_spec, conversion in _FORMATTER.parse(text):
        if field_name is None:
            continue
        if not field_name.isidentifier() or format_spec or conversion:
            raise ValueError(f"'{{{field_name}}}' is not a plain {{name}} variable")
        names.add(field_name)
    return names


def locale_candidates(locale: str) -> list[str]:
    """bn-BD -> [bn-BD, bn, en]: the patient's locale, its language, then English."""
    candidates = [locale]
    language = locale.split("-")[0]
    if language != locale:
        candidates.append(language)
    if FALLBACK_LOCALE not in candidates:
        candidates.append(FALLBACK_LOCALE)
    return candidates


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
