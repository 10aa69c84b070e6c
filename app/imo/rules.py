"""Invitation-round rules, as pure functions: who is a candidate, which time zones may be
worked on now, when a paused round can go on, and what each Imo answer means.

No I/O here. The SQL in `app.imo.repository` mirrors `is_candidate`; the tests hold both
to the same cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from app.channels.base import TransientChannelError
from app.models.imo_invitation_batch import BATCH_COUNTERS
from app.notifications.window import MessagingWindow

# Imo answers to an invitation that are stored as the patient's authorisation status.
AUTHORIZATION_ANSWERS: Final = frozenset(
    {"invited", "subscribed", "not_subscribed", "no_imo_account"}
)
# Answers that leave no authorisation behind: the patient is skipped for the rest of the
# round (`unexpected`, `transient` after retries, `denied` by ALLOWED_RECIPIENTS,
# `unconfirmed`: its worker died with the request sent or about to be) and is a
# candidate again in the next round.
SKIP_ANSWERS: Final = frozenset({"unexpected", "transient", "denied", "unconfirmed"})
assert set(BATCH_COUNTERS) == AUTHORIZATION_ANSWERS | SKIP_ANSWERS

# The button under the invitation, by language (`en` otherwise).
ACCEPT_LABELS: Final = {"bn": "গ্রহণ করুন"}
DEFAULT_ACCEPT_LABEL: Final = "Accept"


def reinvite_before(now: datetime, reinvite_after_days: int) -> datetime:
    """Patients not subscribed whose last invitation is older than this are re-invited."""
    return now - timedelta(days=reinvite_after_days)


def is_candidate(
    status: str | None, last_invited_at: datetime | None, reinvite_before: datetime
) -> bool:
    """Whether a consenting patient with a mobile is invited by a round.

    No authorisation yet: yes. Subscribed: never. Otherwise when the last invitation is
    older than `reinvite_before`, or there never was one (an authorisation that a failed
    notification downgraded).
    """
    if status is None:
        return True
    if status == "subscribed":
        return False
    return last_invited_at is None or last_invited_at < reinvite_before


def accept_label(locale: str) -> str:
    return ACCEPT_LABELS.get(locale.split("-")[0], DEFAULT_ACCEPT_LABEL)


def open_zones(window: MessagingWindow, now: datetime, zones: Iterable[str]) -> list[str]:
    """The time zones, of `zones`, whose messaging window is open at `now`."""
    return [zone for zone in zones if window.contains(now, zone)]


def resume_at(
    window: MessagingWindow, now: datetime, zones: Mapping[str, datetime | None]
) -> datetime | None:
    """When a round that has nothing to do now can go on: the earliest moment at which one
    of `zones` (time zone -> not before, or None) is both open and past its not-before.
    None when `zones` is empty."""
    moments = []
    for zone, not_before in zones.items():
        start = max(now, not_before) if not_before is not None else now
        moments.append(window.next_moment(start, zone))
    return min(moments, default=None)


@dataclass(slots=True)  # not frozen: one per invitation, and a frozen one costs 4x to build
class Answer:
    """What one invitation came to: a `BATCH_COUNTERS` name, and for `transient` the wait
    Imo asked for."""

    patient_id: str
    outcome: str
    retry_after: float | None = None


def answer_of(patient_id: str, result: str | BaseException) -> Answer:
    """Map an `ImoChannel.invite` result (its status, or what it raised) to an Answer.

    An unknown status or an error other than a channel error counts as `unexpected`.
    """
    if isinstance(result, str):
        return Answer(patient_id, result if result in AUTHORIZATION_ANSWERS else "unexpected")
    if isinstance(result, TransientChannelError):
        return Answer(patient_id, "transient", result.retry_after)
    # ImoChannel.invite raises PermanentChannelError only for an unexpected answer.
    return Answer(patient_id, "unexpected")
