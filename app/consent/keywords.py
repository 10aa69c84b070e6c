"""Which consent keyword, if any, a patient's message is. Pure: no I/O."""

from __future__ import annotations

import enum
import string

from app.config import Settings

# Around a keyword, a patient may add punctuation ("STOP.", "বন্ধ।"), quotes too: ASCII,
# the dandas, curly quotes.
_SURROUNDING = string.whitespace + string.punctuation + "\u0964\u0965\u201c\u201d\u2018\u2019"


class Keyword(enum.StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"


def _normalised(word: str) -> str:
    return word.strip(_SURROUNDING).casefold()


def keyword_of(text: str, settings: Settings) -> Keyword | None:
    """The keyword that `text` is, alone (any case, punctuation around it ignored).

    "STOP" and " stop! " are STOP; "please stop the reminders" is no keyword, as with
    carriers' own STOP handling: a sentence is for people to read.
    """
    word = _normalised(text)
    if not word:
        return None
    for keyword, words in (
        (Keyword.STOP, settings.consent_stop_keywords),
        (Keyword.START, settings.consent_start_keywords),
        (Keyword.HELP, settings.consent_help_keywords),
    ):
        if word in {_normalised(w) for w in words}:
            return keyword
    return None
