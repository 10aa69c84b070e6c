"""How a patient's answer to the numbered list is read, and how the list reads. Pure."""

from __future__ import annotations

import re

# The conversations offered are 2..n; 1 is a new topic.
NEW_TOPIC_OPTION = 1
# The list is sent once and re-sent at most twice; then the message is a new topic.
MAX_ASKS = 3
SNIPPET_CHARS = 40

# Any script's decimal digits: "2", "২" (Bengali), "२" (Devanagari) all read as 2.
_NUMBER = re.compile(r"\d+")


def chosen_option(text: str) -> int | None:
    """The first number in `text`, surrounding words ignored: "2 please" -> 2."""
    found = _NUMBER.search(text)
    if found is None or len(found.group()) > 3:
        return None
    return int(found.group())


def snippet(subject: str) -> str:
    flat = " ".join(subject.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"


def numbered_list(new_topic: str, subjects: list[str]) -> str:
    """`1. <new topic>`, then `2. <subject>`... one a line."""
    lines = [f"{NEW_TOPIC_OPTION}. {new_topic}"]
    lines += [f"{number}. {snippet(s)}" for number, s in enumerate(subjects, start=2)]
    return "\n".join(lines)
