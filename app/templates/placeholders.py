"""The `{name}` variables of a template's text: what the schema checks on writing and
rendering fills in."""

from __future__ import annotations

import string

_FORMATTER = string.Formatter()

# The template a text written by hand travels in (a staff member's message, a
# broadcast's text): its body is `{text}`, the text as written
# (migration 20261204_staff_message_template).
FREE_TEXT_TEMPLATE = "conversation.staff_message"
FREE_TEXT_VARIABLE = "text"


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
