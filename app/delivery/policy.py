"""Delivery rules, as pure functions: who may be messaged, on which channels, and what a
provider's answer means for the notification. No I/O here, so every rule is unit-tested.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.channels.base import ChannelName, PermanentChannelError, TransientChannelError
from app.config import Settings
from app.consent.rules import OPTED_OUT, opted_out_everywhere, opted_out_of
from app.delivery.types import ClaimedNotification, Outcome, SendOn
from app.notifications.window import MessagingWindow
from app.states import ADDRESS_CHANNELS, NotificationState

S = NotificationState

# What an Imo refusal says about the patient's authorisation.
# Why a notification that outlived its `expires_at` unsent ends `expired`.
EXPIRED_REASON = "not sent while still useful"
# Staff are reached by email only (PUT /v1/staff/{id} has no phone).
STAFF_CHAIN = (ChannelName.EMAIL.value,)
STAFF_NO_EMAIL = "staff member has no email address: staff are reached by email only"
STAFF_NO_EMAIL_CHANNEL = "email is not configured: staff are reached by email only"
IMO_DOWNGRADES = {"not_subscribed": "not_subscribed", "nonexistent_user": "no_imo_account"}


def channel_chain(
    settings: Settings,
    country: str,
    purpose: str,
    imo_status: str | None,
    available: set[str],
    whatsapp_unavailable: bool = False,
) -> list[str]:
    """The channels to try for a patient and purpose, in order: configured for the
    country and purpose (`Settings.chain_for`), available, eligible."""
    return [
        name
        for name in settings.chain_for(country, purpose)
        if name in available and eligible(name, imo_status, whatsapp_unavailable)
    ]


def eligible(channel: str, imo_status: str | None, whatsapp_unavailable: bool) -> bool:
    """Imo only for patients `subscribed` there; WhatsApp not for a number it said lately
    has no account."""
    if channel == ChannelName.IMO:
        return imo_status == "subscribed"
    if channel == ChannelName.WHATSAPP:
        return not whatsapp_unavailable
    return True


def deny_rule(phone: str, settings: Settings, gateway_numbers: frozenset[str]) -> str | None:
    """The deny rule `phone` matches (CHT's outgoing deny rules), or None: it may be sent to.

    A gateway phone's own number is never a recipient: a message to it would come back in.
    """
    if phone in gateway_numbers:
        return "the number of a gateway phone"
    lowered = phone.lower()
    for prefix in settings.outgoing_deny_list:
        if lowered.startswith(prefix.lower()):
            return f"OUTGOING_DENY_LIST ({prefix})"
    shorter_than = settings.outgoing_deny_shorter_than
    if shorter_than and sum(c.isdigit() for c in phone) < shorter_than:
        return f"OUTGOING_DENY_SHORTER_THAN ({shorter_than} digits)"
    if settings.outgoing_deny_with_alphas and any(c.isalpha() for c in phone):
        return "OUTGOING_DENY_WITH_ALPHAS"
    return None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Which channels are configured, and the CHANNEL_CHAINS steps that are not (by
    chain key): logged at start-up and shown by /readyz, never skipped unseen."""

    configured: list[str]
    unconfigured: list[str]
    unconfigured_steps: dict[str, list[str]]

    def as_json(self) -> dict[str, object]:
        return {
            "configured": self.configured,
            "unconfigured": self.unconfigured,
            "unconfigured_steps": self.unconfigured_steps,
        }


def chain_report(settings: Settings, configured: set[str]) -> ChainReport:
    steps = {
        key: [name for name in chain if name not in configured]
        for key, chain in sorted(settings.channel_chains.items())
    }
    steps = {key: names for key, names in steps.items() if names}
    return ChainReport(
        configured=sorted(configured),
        unconfigured=sorted({name for names in steps.values() for name in names}),
        unconfigured_steps=steps,
    )


def first_step(
    n: ClaimedNotification,
    *,
    now: datetime,
    window: MessagingWindow,
    settings: Settings,
    available: set[str],
    gateway_numbers: frozenset[str] = frozenset(),
) -> Outcome | SendOn:
    """What to do with a freshly claimed notification: refuse it, put it off, or send."""
    if now >= n.expires_at:
        return Outcome(S.EXPIRED, failure_reason=EXPIRED_REASON)
    if n.staff_id is not None:
        return staff_step(n, now=now, window=window, available=available)
    if n.reminder_consent != "granted":
        return Outcome(S.DENIED, failure_reason="no reminder consent")
    if opted_out_everywhere(n.opted_out_channels):
        return Outcome(S.DENIED, failure_reason=OPTED_OUT)
    if n.mobile_e164 is None and n.email is None:
        return Outcome(S.DENIED, failure_reason="no mobile number")
    if n.mobile_e164 is not None:
        rule = deny_rule(n.mobile_e164, settings, gateway_numbers)
        if rule is not None:
            return Outcome(S.DENIED, failure_reason=f"recipient denied by {rule}")
    if not window.contains(now, n.time_zone):
        return _until_the_window_opens(n, now, window)
    chain = n.channel_chain
    if chain is None:
        configured = channel_chain(
            settings, n.country, n.purpose, n.imo_status, available, n.whatsapp_unavailable
        )
        chain = reachable_chain(n, configured, settings, available)
        denial = email_denial(n)
        if not chain and denial is not None and ChannelName.EMAIL in configured:
            return Outcome(S.DENIED, failure_reason=denial)
    return next_channel(n, chain, n.channel_index)


def _until_the_window_opens(
    n: ClaimedNotification, now: datetime, window: MessagingWindow
) -> Outcome:
    """Back to `scheduled`, due when the recipient's messaging window next opens."""
    return Outcome(
        S.SCHEDULED,
        channel_chain=n.channel_chain,
        channel_index=n.channel_index,
        due_at=window.next_moment(now, n.time_zone),
        retry_count=n.retry_count,
    )


def staff_step(
    n: ClaimedNotification, *, now: datetime, window: MessagingWindow, available: set[str]
) -> Outcome | SendOn:
    """A staff member's notification: by email only, whatever CHANNEL_CHAINS says; a
    patient's consent, opt-outs and deny rules (phone numbers) do not apply. Without an
    address, or to a blocked one, it ends `denied` with the reason, never attempted;
    outside the window (`n.time_zone`: the event's patient's, else STAFF_TIME_ZONE) it
    waits."""
    chain = list(STAFF_CHAIN)
    if not n.email:
        return Outcome(S.DENIED, failure_reason=STAFF_NO_EMAIL)
    denial = email_denial(n)
    if denial is not None:
        return Outcome(S.DENIED, failure_reason=denial)
    if not window.contains(now, n.time_zone):
        return _until_the_window_opens(n, now, window)
    if ChannelName.EMAIL not in available:
        return Outcome(
            S.FAILED, channel_chain=chain, channel_index=0, failure_reason=STAFF_NO_EMAIL_CHANNEL
        )
    return SendOn(chain, 0)


def email_denial(n: ClaimedNotification) -> str | None:
    """Why the patient's email address may not be mailed, or None: the one per-address
    check of the send path. The claim fills `email_blocked` (a hard bounce, a complaint,
    an unsubscribe); a blocked address is never attempted."""
    if n.email is not None and n.email_blocked:
        return f"email address blocked: {n.email_blocked}"
    return None


def reachable_chain(
    n: ClaimedNotification, chain: list[str], settings: Settings, available: set[str]
) -> list[str]:
    """`chain` without the channels the patient cannot be reached on (email without a
    usable address, the phone channels without a mobile), and with email first for the
    purposes that prefer it (EMAIL_PREFERRED_PURPOSES) when the patient has an address."""
    has_email = n.email is not None and email_denial(n) is None
    if (
        has_email
        and n.purpose in settings.email_preferred_purposes
        and ChannelName.EMAIL in available
    ):
        chain = [ChannelName.EMAIL.value, *(c for c in chain if c != ChannelName.EMAIL)]
    return [c for c in chain if (has_email if c in ADDRESS_CHANNELS else n.mobile_e164 is not None)]


def held(n: ClaimedNotification, step: SendOn, scope: str) -> Outcome:
    """A paused switch covers this send: the notification waits `scheduled` on the same
    channel (no fallback: that would change what an experiment compares) until the
    switch is resumed, or until it expires."""
    return Outcome(
        S.SCHEDULED,
        channel_chain=step.chain,
        channel_index=step.index,
        due_at=n.expires_at,
        retry_count=n.retry_count,
        failure_reason=f"paused: {scope}",
        paused_by=scope,
    )


def usable_index(
    chain: list[str],
    index: int,
    imo_status: str | None,
    whatsapp_unavailable: bool = False,
    opted_out_channels: Sequence[str] = (),
) -> int | None:
    """The first channel from `index` on that can take the message, if any.

    Imo is skipped once the patient's authorisation is no longer `subscribed`, WhatsApp
    once it said the number has no account, and a channel the patient opted out of always.
    """
    for position in range(index, len(chain)):
        if opted_out_of(opted_out_channels, chain[position]):
            continue
        if eligible(chain[position], imo_status, whatsapp_unavailable):
            return position
    return None


def next_channel(n: ClaimedNotification, chain: list[str], index: int) -> Outcome | SendOn:
    """The first usable channel from `index` on; `denied` when the patient opted out of
    every one left, `failed` when none is left otherwise."""
    usable = usable_index(chain, index, n.imo_status, n.whatsapp_unavailable, n.opted_out_channels)
    if usable is not None:
        return SendOn(chain, usable)
    if any(opted_out_of(n.opted_out_channels, c) for c in chain[index:]):
        return Outcome(S.DENIED, channel_chain=chain, channel_index=index, failure_reason=OPTED_OUT)
    return Outcome(
        S.FAILED,
        channel_chain=chain,
        channel_index=index,
        failure_reason="no channel left to try" if chain else "no channel for this patient",
    )


def backoff(retry_count: int, settings: Settings, retry_after: float | None) -> timedelta:
    """Capped exponential backoff with full jitter; never sooner than the provider asked."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2**retry_count)
    delay = random.uniform(ceiling / 2, ceiling)
    return timedelta(seconds=max(delay, retry_after or 0.0))


def after_error(
    n: ClaimedNotification,
    step: SendOn,
    error: Exception,
    *,
    now: datetime,
    window: MessagingWindow,
    settings: Settings,
) -> Outcome | SendOn:
    """A channel refused or failed: deny, retry later, fall back, or fail."""
    channel = step.chain[step.index]
    reason = describe(channel, error)
    if maybe_sent(error):
        # Resending, here or on another channel, could reach the patient twice.
        return Outcome(
            S.SENT,
            channel_chain=step.chain,
            channel_index=step.index,
            retry_count=n.retry_count,
            failure_reason=f"unconfirmed: {reason}",
            sent_at=now,
        )
    if isinstance(error, PermanentChannelError) and error.opted_out:
        # The patient opted out of this channel at the provider (Twilio 21610): the
        # dispatcher records it; the next channel may still carry the message.
        following = next_channel(n, step.chain, step.index + 1)
        if isinstance(following, SendOn):
            return following
        return Outcome(
            S.DENIED, channel_chain=step.chain, channel_index=step.index, failure_reason=OPTED_OUT
        )
    if isinstance(error, PermanentChannelError) and error.recipient_invalid:
        return Outcome(
            S.DENIED, channel_chain=step.chain, channel_index=step.index, failure_reason=reason
        )
    if template_rejected(error):
        # An operator must fix the template: a fallback would hide it behind SMS.
        return Outcome(
            S.FAILED, channel_chain=step.chain, channel_index=step.index, failure_reason=reason
        )
    retriable = isinstance(error, TransientChannelError) and channel != ChannelName.IMO
    if retriable and n.retry_count < settings.retry_max_attempts:
        assert isinstance(error, TransientChannelError)
        due = now + backoff(n.retry_count, settings, error.retry_after)
        return Outcome(
            S.SCHEDULED,
            channel_chain=step.chain,
            channel_index=step.index,
            due_at=window.next_moment(due, n.time_zone),
            retry_count=n.retry_count + 1,
            failure_reason=reason,
        )
    # Imo: any failure falls back at once (the fallback is the common path there).
    following = next_channel(n, step.chain, step.index + 1)
    if isinstance(following, Outcome):
        return Outcome(
            S.FAILED,
            channel_chain=step.chain,
            channel_index=step.index,
            failure_reason=reason,
        )
    return following


def after_delivery_failure(
    imo_status: str | None, step: SendOn, now: datetime, reason: str
) -> Outcome:
    """A channel took the message, then reported it failed (Twilio `undelivered`):
    due again at once on the next channel, or `failed` when none is left."""
    channel = step.chain[step.index]
    index = usable_index(step.chain, step.index + 1, imo_status)
    if index is not None:
        return Outcome(
            S.SCHEDULED,
            channel_chain=step.chain,
            channel_index=index,
            due_at=now,
            failure_reason=f"{channel}: {reason}",
        )
    return Outcome(
        S.FAILED,
        channel_chain=step.chain,
        channel_index=step.index,
        failure_reason=f"{channel}: {reason}",
    )


def maybe_sent(error: Exception) -> bool:
    """The provider may have taken the message despite the error: never send it again."""
    return isinstance(error, PermanentChannelError) and error.maybe_sent


def describe(channel: str, error: Exception) -> str:
    code = getattr(error, "code", "") or type(error).__name__
    message = getattr(error, "message", "") or str(error)
    return f"{channel}: {code}: {message}"[:500]


def provider_opt_out(channel: str, error: Exception) -> str | None:
    """The channel a provider's refusal says the patient opted out of, if any."""
    if isinstance(error, PermanentChannelError) and error.opted_out:
        return channel
    return None


def template_rejected(error: Exception) -> bool:
    """The provider has no such template, or it cannot be filled with our parameters."""
    return isinstance(error, PermanentChannelError) and bool(error.template_rejected)


def no_whatsapp_account(channel: str, error: Exception) -> bool:
    """WhatsApp said this number has no account: do not try it there for a while."""
    return (
        channel == ChannelName.WHATSAPP
        and isinstance(error, PermanentChannelError)
        and error.no_account
    )


def imo_downgrade(channel: str, error: Exception) -> str | None:
    """The authorisation status an Imo refusal implies, if any."""
    if channel != ChannelName.IMO or not isinstance(error, PermanentChannelError):
        return None
    return IMO_DOWNGRADES.get(error.code)
