"""Email addresses: validated with `email-validator` (syntax only, no DNS), stored in one
normal form so that the same address always compares equal.

The normal form is the ASCII one: the domain lower-cased and, when internationalised, in
IDNA (punycode), so that it goes into an SMTP envelope and a header as it is. The local
part keeps its case (RFC 5321 lets a server tell `Ana` from `ana`), but must be ASCII:
an internationalised mailbox needs SMTPUTF8 end to end, which this service does not
promise. Every comparison of addresses (allow-lists, bounces, a reply's sender) goes
through `normalize`.
"""

from __future__ import annotations

from typing import Annotated

import email_validator
from pydantic import AfterValidator, Field, StringConstraints

MAX_LENGTH = 254  # RFC 5321's path limit, less the angle brackets


class InvalidEmailAddress(ValueError):
    pass


def normalize(value: str) -> str:
    """`value` in the normal form above. Raises InvalidEmailAddress, saying why."""
    try:
        checked = email_validator.validate_email(
            value.strip(),
            check_deliverability=False,
            allow_smtputf8=False,
            allow_display_name=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidEmailAddress(f"not an email address: {exc}") from exc
    # With allow_smtputf8=False a valid address always has its ASCII form.
    assert checked.ascii_email is not None
    local, _, domain = checked.ascii_email.rpartition("@")
    return f"{local}@{domain.lower()}"


def is_valid(value: str) -> bool:
    try:
        normalize(value)
    except InvalidEmailAddress:
        return False
    return True


def domain_of(address: str) -> str:
    """The domain of a normalised address."""
    return address.rpartition("@")[2]


def _normalized(value: str) -> str:
    try:
        return normalize(value)
    except InvalidEmailAddress as exc:
        raise ValueError(str(exc)) from exc


# A request field: validated and normalised on the way in.
EmailAddress = Annotated[
    str,
    StringConstraints(min_length=3, max_length=MAX_LENGTH),
    AfterValidator(_normalized),
    Field(
        description="An email address; stored with its domain in lower case (IDNA)",
        examples=["rahim.uddin@example.org"],
    ),
]
