"""The notification and delivery-attempt state machines: the one home of their rules.

Two tables say every move there is, and everything else reads them: the Python rules
(`notification_move`, `attempt_moves`) and every SQL guard of the send and callback
paths (`sql_notification_moves`, `sql_attempt_moves`, `sql_in`), generated from these
tables so that the database can never apply another rule. tests/test_states.py walks
every (state, event) pair through both against PostgreSQL.

A state only moves forward (`NOTIFICATION_RANK`, `ATTEMPT_RANK`): a late or repeated
provider callback never takes a message back. The backward steps are deliberate and
internal (`BACKWARD_EVENTS`): a message whose channel failed, or that a worker claimed
and did not send, returns to `scheduled` (`RETRY`) to try the next channel or to wait
out a transient error, or, when the sweeper had settled it `sent` before its worker's
answer said the send failed, to `sending` (`FALL_BACK`) on the way to the next channel;
and a reminder taken by Imo or WhatsApp but not read in time returns to `scheduled`
(`UNREAD_FALLBACK`, once) to go on the next channel.

A read receipt proves the patient has the message: `read` beats every other state of an
attempt (even `failed`: the failure was wrong, or the message got through anyway) and of
its notification (even `failed`, `expired` or a fallback still `scheduled`, which then
is not sent), except while a worker holds the notification (`sending`): the worker
settles it. `delivered` and `failed` are both final reports of a carrier: whichever
arrives first stands, and a later contradicting one changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class NotificationState(enum.StrEnum):
    SCHEDULED = "scheduled"
    # Never stored: the API reports a scheduled notification that is due as `pending`.
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    DENIED = "denied"
    # The loop guard stopped it: too many of the same text to the same number lately.
    DUPLICATE = "duplicate"
    CLEARED = "cleared"
    MUTED = "muted"
    EXPIRED = "expired"


class NotificationEvent(enum.StrEnum):
    """What can happen to a notification; each event leads to one state."""

    # A worker takes a due notification (`claim_due`).
    CLAIM = "claim"
    # A person (or an appointment or experiment change) acts on an unsent notification.
    CANCEL = "cancel"
    MUTE = "mute"
    UNMUTE = "unmute"
    # Where a send leaves the notification, written by the worker (`settle`), by the
    # sweeper for a dead worker's claim, and by a provider's failure report on the
    # attempt that made it `sent` (`follow_failure`).
    RETRY = "retry"
    FALL_BACK = "fall_back"
    ACCEPT = "accept"
    DELIVER = "deliver"
    READ = "read"
    FAIL = "fail"
    DENY = "deny"
    # The loop guard (DUPLICATE_LIMIT): never sent.
    DUPLICATE = "duplicate"
    EXPIRE = "expire"
    # A provider's report that one of its attempts reached the patient (`raise_notifications`).
    REPORT_DELIVERED = "report_delivered"
    REPORT_READ = "report_read"
    # Taken by Imo or WhatsApp and not read in time: the next channel (`hand_on_unread`).
    UNREAD_FALLBACK = "unread_fallback"


S = NotificationState
E = NotificationEvent

# The state each event leads to.
EVENT_TARGET: dict[NotificationEvent, NotificationState] = {
    E.CLAIM: S.SENDING,
    E.CANCEL: S.CLEARED,
    E.MUTE: S.MUTED,
    E.UNMUTE: S.SCHEDULED,
    E.RETRY: S.SCHEDULED,
    E.FALL_BACK: S.SENDING,
    E.ACCEPT: S.SENT,
    E.DELIVER: S.DELIVERED,
    E.READ: S.READ,
    E.FAIL: S.FAILED,
    E.DENY: S.DENIED,
    E.DUPLICATE: S.DUPLICATE,
    E.EXPIRE: S.EXPIRED,
    E.REPORT_DELIVERED: S.DELIVERED,
    E.REPORT_READ: S.READ,
    E.UNREAD_FALLBACK: S.SCHEDULED,
}

# The states each event may move a notification from. Any other (state, event) pair
# changes nothing.
EVENT_SOURCES: dict[NotificationEvent, frozenset[NotificationState]] = {
    E.CLAIM: frozenset({S.SCHEDULED}),
    E.CANCEL: frozenset({S.SCHEDULED, S.MUTED}),
    E.MUTE: frozenset({S.SCHEDULED}),
    E.UNMUTE: frozenset({S.MUTED}),
    # From `sent`: the provider reported the accepted message failed; next channel.
    E.RETRY: frozenset({S.SENDING, S.SENT}),
    # From `sent`: the sweeper took the claim of a worker too slow to write its answer
    # back (and marked the attempt it had in flight `unconfirmed`); the answer says the
    # attempt failed, so the next channel is tried after all (fenced off from that
    # worker, so the sweeper releases it again, to `scheduled`).
    E.FALL_BACK: frozenset({S.SENDING, S.SENT}),
    E.ACCEPT: frozenset({S.SENDING}),
    # From `sending`: a callback beat the worker's own write (or the sweeper saw it).
    E.DELIVER: frozenset({S.SENDING, S.SENT}),
    E.READ: frozenset({S.SENDING, S.SENT, S.DELIVERED}),
    # From `sent`: the provider reported the accepted message failed; no channel left.
    E.FAIL: frozenset({S.SENDING, S.SENT}),
    E.DENY: frozenset({S.SENDING, S.SENT}),
    # Decided by the worker holding it, before any attempt.
    E.DUPLICATE: frozenset({S.SENDING}),
    E.EXPIRE: frozenset({S.SENDING}),
    # Never from `sending`: the worker holding it settles it with what the attempt says.
    E.REPORT_DELIVERED: frozenset({S.SENT}),
    E.REPORT_READ: frozenset(
        {
            S.SCHEDULED,
            S.MUTED,
            S.SENT,
            S.DELIVERED,
            S.FAILED,
            S.DENIED,
            S.CLEARED,
            S.EXPIRED,
        }
    ),
    # Once, on a channel with read receipts (app/delivery/unread.py).
    E.UNREAD_FALLBACK: frozenset({S.SENT, S.DELIVERED}),
}

# Progress towards the patient. No event lowers it but the internal steps back to try
# the next channel or wait out a transient error: RETRY (to `scheduled`) and, after the
# sweeper settled a claim too early, FALL_BACK (to `sending`); and, once, an unread
# reminder's UNREAD_FALLBACK (to `scheduled`). The ends that need no patient (failed,
# denied, duplicate, cleared, expired) rank with `delivered`: only a read receipt goes
# past them.
NOTIFICATION_RANK: dict[NotificationState, int] = {
    S.SCHEDULED: 0,
    S.MUTED: 0,
    S.SENDING: 1,
    S.SENT: 2,
    S.DELIVERED: 3,
    S.FAILED: 3,
    S.DENIED: 3,
    S.DUPLICATE: 3,
    S.CLEARED: 3,
    S.EXPIRED: 3,
    S.READ: 4,
}
BACKWARD_EVENTS = frozenset({E.RETRY, E.FALL_BACK, E.UNREAD_FALLBACK})

# Where the worker's outcome of a send (an `Outcome.state`) comes from: the events
# `settle` writes, one per state it may write.
SETTLE_EVENTS = frozenset(
    {E.RETRY, E.FALL_BACK, E.ACCEPT, E.DELIVER, E.READ, E.FAIL, E.DENY, E.DUPLICATE, E.EXPIRE}
)
# A provider's report on an attempt, as an event on its notification.
REPORT_EVENTS = frozenset({E.REPORT_DELIVERED, E.REPORT_READ})

STORED_STATES = tuple(s.value for s in NotificationState if s is not NotificationState.PENDING)

# States in which a channel has taken the message.
ACCEPTED_STATES = frozenset({S.SENT, S.DELIVERED, S.READ})
# States a person can still cancel, mute or unmute from.
UNSENT_STATES = EVENT_SOURCES[E.CANCEL]
# The state a worker holds a claimed notification in.
HELD_STATE = EVENT_TARGET[E.CLAIM]


def notification_move(state: str, event: NotificationEvent) -> NotificationState | None:
    """The state `event` moves a notification in `state` to, or None: it changes nothing."""
    if state in EVENT_SOURCES[event]:
        return EVENT_TARGET[event]
    return None


def notification_moves(events: Iterable[NotificationEvent]) -> set[tuple[str, str]]:
    """Every (from, to) state pair the `events` allow: each event's target identifies it."""
    targets = [EVENT_TARGET[event] for event in events]
    assert len(targets) == len(set(targets)), "two events lead to one state: ambiguous"
    return {
        (source.value, EVENT_TARGET[event].value)
        for event in events
        for source in EVENT_SOURCES[event]
    }


class AttemptStatus(enum.StrEnum):
    """One normalised status for every channel's delivery attempts.

    An attempt's event is the status reported for it (by the worker's write-back, the
    sweeper or a provider callback): it moves the attempt there if that ranks higher.
    """

    SENDING = "sending"
    # The process died between asking the provider and writing down its answer.
    UNCONFIRMED = "unconfirmed"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


A = AttemptStatus

# An attempt moves only to a higher rank. `failed` and `delivered` are both final for a
# provider: whichever arrives first stands. `read` proves the patient has it.
ATTEMPT_RANK: dict[AttemptStatus, int] = {
    A.SENDING: 0,
    A.UNCONFIRMED: 1,
    A.SENT: 2,
    A.FAILED: 3,
    A.DELIVERED: 3,
    A.READ: 4,
}

# The attempt table: (status, reported status) pairs that move an attempt.
ATTEMPT_MOVES = frozenset(
    (old.value, new.value)
    for old in AttemptStatus
    for new in AttemptStatus
    if ATTEMPT_RANK[new] > ATTEMPT_RANK[old]
)


def attempt_moves(status: str, reported: str) -> bool:
    """Whether a report of `reported` moves an attempt in `status` (to `reported`)."""
    return (status, reported) in ATTEMPT_MOVES


# A provider confirmed taking the message.
CONFIRMED_STATUSES = frozenset({A.SENT, A.DELIVERED, A.READ})
# What an attempt's status proves of its notification, once no worker holds it (the
# sweeper's rule for a dead worker's claim).
ATTEMPT_PROVES: dict[AttemptStatus, NotificationState] = {
    A.UNCONFIRMED: S.SENT,
    A.SENT: S.SENT,
    A.DELIVERED: S.DELIVERED,
    A.READ: S.READ,
}
# The attempt reports a notification follows, as events.
ATTEMPT_REPORT_EVENTS: dict[AttemptStatus, NotificationEvent] = {
    A.DELIVERED: E.REPORT_DELIVERED,
    A.READ: E.REPORT_READ,
}

# "Reached the patient", the same for every channel: an Imo read, an SMS delivered.
REACHED_STATUSES = frozenset({A.DELIVERED, A.READ})


# SQL fragments, built from the tables above and enum values only (never input).


def sql_list(values: Iterable[str]) -> str:
    """`'a', 'b'`: constants for an `IN (...)`."""
    return ", ".join(f"'{value}'" for value in sorted(values))


def sql_in(column: str, values: Iterable[str], *, indexable: bool = True) -> str:
    """`column IN ('a', 'b')`; `column = 'a'` for one value (as partial indexes say it).

    `indexable=False` for a statement that finds its rows by primary key and only checks
    their state: the condition is then one no index can serve (`(...) IS TRUE`), so the
    planner cannot read the rows by state instead. With statistics taken while no row was
    `sending` or `delivered`, it did: a settle walked every `delivered` row of the table
    (ix_notifications_state_created) and joined each with the batch, 2 s per 500 rows on
    a 30,000-row table (docs/benchmarks.md, "The settle's plan").
    """
    values = list(values)
    condition = (
        f"{column} = '{values[0]}'" if len(values) == 1 else f"{column} IN ({sql_list(values)})"
    )
    return condition if indexable else f"({condition}) IS TRUE"


def _sql_pairs_in(old: str, new: str, pairs: Iterable[tuple[str, str]]) -> str:
    rows = ", ".join(f"('{a}', '{b}')" for a, b in sorted(pairs))
    return f"(({old})::text, ({new})::text) IN ({rows})"


def sql_notification_moves(old: str, new: str, events: Iterable[NotificationEvent]) -> str:
    """A condition: one of `events` moves a notification in state `old` to state `new`."""
    return _sql_pairs_in(old, new, notification_moves(events))


def sql_attempt_moves(old: str, new: str) -> str:
    """A condition: a report of status `new` moves an attempt in status `old`."""
    return _sql_pairs_in(old, new, ATTEMPT_MOVES)


def sql_case(column: str, mapping: dict[str, str] | dict[str, int] | dict[int, str]) -> str:
    """`CASE column WHEN k THEN v ... END`, strings quoted."""

    def constant(value: str | int) -> str:
        return str(value) if isinstance(value, int) else f"'{value}'"

    arms = " ".join(
        f"WHEN {constant(key)} THEN {constant(value)}" for key, value in mapping.items()
    )
    return f"(CASE {column} {arms} END)"


class ChannelName(enum.StrEnum):
    """The channels a reminder can go on (CHANNEL_CHAINS, switches, attempts)."""

    IMO = "imo"
    WHATSAPP = "whatsapp"
    SMS = "sms"
    # SMS from a gateway phone's own SIM (cht-gateway), queued for its polls.
    GATEWAY = "gateway"
    # An email to the patient's (or staff user's) address, over SMTP.
    EMAIL = "email"


# Channels that report reads: a reminder taken there and not read may fall back once.
READ_RECEIPT_CHANNELS = frozenset({ChannelName.IMO, ChannelName.WHATSAPP})
# Channels that reach an email address; every other one reaches the mobile number.
ADDRESS_CHANNELS = frozenset({ChannelName.EMAIL})
