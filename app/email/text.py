"""Text from an email made storable and safe to show: the one home of that cleaning.

Mail arrives in any charset, sometimes lying about it, with raw 8-bit bytes in headers
(which the standard library keeps as lone surrogates), and with encoded words that
decode to CR or LF (`=?utf-8?q?Hi=0D=0ABcc:_x@y?=`: header injection, should the text
ever reach a header again). PostgreSQL cannot store a NUL or a lone surrogate; a
bidirectional override in a message makes it read backwards on a dashboard. So:
"""

from __future__ import annotations

import codecs
import re

# As app/validation.py refuses them in API input: C0 controls but tab and line breaks,
# DEL, C1 controls, bidi embeddings, overrides and isolates, lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_SPACES = re.compile(r"\s+")
REPLACEMENT = "\ufffd"


def clean(text: str, max_chars: int) -> str:
    """Multi-line text: line breaks made `\\n`, unsafe characters replaced, at most
    `max_chars` characters."""
    text = _BREAKS.sub("\n", text[: max_chars * 2])
    return _UNSAFE.sub(REPLACEMENT, text)[:max_chars]


def single_line(text: str, max_chars: int) -> str:
    """A header value (subject, name, file name): every run of white space, CR and LF
    included, made one space; unsafe characters removed; at most `max_chars`."""
    text = _UNSAFE.sub("", _SPACES.sub(" ", text[: max_chars * 4]))
    return text.strip()[:max_chars]


def decode(payload: bytes, declared: str | None) -> str:
    """A body's bytes as text: in the charset it declares when that reads it, else
    UTF-8 when that reads it (undeclared 8-bit mail is mostly UTF-8), else Windows-1252
    (which reads any byte), with undecodable bytes replaced, never refused."""
    for charset in (declared, "utf-8"):
        if not charset:
            continue
        try:
            codecs.lookup(charset)
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return payload.decode("cp1252", errors="replace")
