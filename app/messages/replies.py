"""The service's own answers to a patient (STOP's confirmation, HELP's text, the numbered
list) where the provider takes no answer in its webhook's response: the WhatsApp Cloud
API, and email (a keyword in a reply by email is answered by email, to the patient's
address, its first line as the subject). Each is stored as an outgoing message
(audience `reply`) in the transaction that handled the patient's message, then sent by a
worker as free text: the patient's message just opened WhatsApp's 24-hour window.

At most once: a worker takes an answer (`pending` -> `sending`) before it sends, so a
worker killed mid-send leaves it `sending`, never sent twice. A provider's refusal or
a transient error that outlasts the tries ends it `failed` with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import (
    Channel,
    OutgoingMessage,
    PermanentChannelError,
    TransientChannelError,
)
from app.config import Settings
from app.logs import mask_email, mask_phone, redact
from app.states import ChannelName

log = logging.getLogger(__name__)

# Where to find it in the patient's history: beside the message it answers, on the same
# conversation (none, for a keyword or a question about which conversation).
_RECORD = text(
    """
    INSERT INTO messages (direction, channel, phone_e164, audience, patient_id, text, media,
                          received_at, conversation_id, send_state)
    SELECT 'out', channel, phone_e164, 'reply', patient_id, :text, '[]'::jsonb,
           greatest(received_at, now()), conversation_id, 'pending'
    FROM messages WHERE id = :inbound_id
    RETURNING id
    """
)


async def record(session: AsyncSession, inbound_id: int, answer: str) -> int:
    """Store the answer to inbound message `inbound_id`, to be sent on its channel to its
    sender -> the answer's id. Flushes (the caller commits, then hands it to a worker)."""
    answer_id = await session.scalar(_RECORD, {"inbound_id": inbound_id, "text": answer})
    if answer_id is None:
        raise LookupError(f"no message {inbound_id}")
    return int(answer_id)


_TAKE = text(
    """
    UPDATE messages AS m SET send_state = 'sending', updated_at = now()
    WHERE m.id = :id AND m.send_state = 'pending'
    RETURNING m.phone_e164, m.text, m.channel,
              coalesce((SELECT locale FROM patients WHERE id = m.patient_id), 'en') AS locale,
              -- An answer by email goes to the patient's address (the one the keyword
              -- came from: app/email matched it), unless the address is blocked.
              (SELECT email FROM patients WHERE id = m.patient_id) AS email,
              EXISTS (SELECT FROM patients AS p
                      JOIN email_addresses AS ea ON ea.address = lower(p.email)
                      WHERE p.id = m.patient_id AND ea.status = 'blocked') AS email_blocked
    """
)

_SETTLE = text(
    """
    UPDATE messages SET send_state = :state, provider_message_id = :provider_message_id,
                        failure_reason = :failure_reason, updated_at = now()
    WHERE id = :id AND send_state = 'sending'
    """
)


@dataclass(frozen=True, slots=True)
class Sent:
    state: str  # sent, failed, pending (a transient error: try again), or taken
    failure_reason: str | None = None


async def send(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    channels: dict[str, Channel],
    answer_id: int,
    *,
    last_try: bool,
) -> Sent:
    """Send one stored answer on its channel, once. `taken`: it was not `pending` (sent,
    failed, or another worker's). A transient error puts it back `pending` for the caller
    to try again later, unless `last_try`."""
    async with sessionmaker() as session:
        row = (await session.execute(_TAKE, {"id": answer_id})).first()
        await session.commit()
    if row is None:
        return Sent("taken")
    channel = channels.get(row.channel)
    by_email = row.channel == ChannelName.EMAIL
    recipient = (row.email if by_email else row.phone_e164) or ""
    outcome: Sent
    provider_message_id = None
    if channel is None:
        outcome = Sent("failed", f"no {row.channel} channel is configured")
    elif not recipient:
        outcome = Sent("failed", "the patient has no email address" if by_email else "no number")
    elif by_email and row.email_blocked:
        outcome = Sent("failed", "the patient's email address is blocked")
    elif not settings.recipient_allowed(recipient):
        outcome = Sent("failed", "recipient not in ALLOWED_RECIPIENTS")
    else:
        message = OutgoingMessage(
            phone_e164=row.phone_e164 or "",
            text=row.text,
            locale=row.locale,
            # An email's subject: the answer's first line.
            title=_first_line(row.text) if by_email else "",
            callback_url="",
            free_text_allowed=True,
            email=row.email or "" if by_email else "",
        )
        try:
            result = await channel.send(message)
            outcome, provider_message_id = Sent("sent"), result.provider_message_id
        except TransientChannelError as exc:
            reason = f"{exc.code or exc.provider_status or 'transient'}: {exc.message}"
            outcome = Sent("failed" if last_try else "pending", reason)
        except PermanentChannelError as exc:
            outcome = Sent("failed", f"{exc.code or exc.provider_status}: {exc.message}")
    async with sessionmaker() as session:
        await session.execute(
            _SETTLE,
            {
                "id": answer_id,
                "state": outcome.state,
                "provider_message_id": provider_message_id,
                "failure_reason": outcome.failure_reason[:500] if outcome.failure_reason else None,
            },
        )
        await session.commit()
    log_at = logging.INFO if outcome.state == "sent" else logging.WARNING
    log.log(
        log_at,
        "answer to a patient: %s",
        outcome.state,
        extra={
            "message_id": answer_id,
            "channel": row.channel,
            "recipient": mask_email(recipient) if by_email else mask_phone(recipient),
            "reason": redact(outcome.failure_reason or ""),
        },
    )
    return outcome


def _first_line(text: str, limit: int = 78) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "\u2026"


SEND_JOB = "send_patient_answer"
# Tries of a transient error before the answer is `failed` (arq's job tries).
SEND_TRIES = 3


def send_job_id(answer_id: int) -> str:
    """One job per answer: handing it on twice (the API, then the cron) queues it once."""
    return f"patient-answer:{answer_id}"


async def hand_on(redis: ArqRedis, answer_ids: list[int]) -> None:
    """Queue the answers for a worker. Redis away: they stay `pending`, and the cron
    (`stuck`) hands them on later."""
    for answer_id in answer_ids:
        try:
            await redis.enqueue_job(SEND_JOB, answer_id, _job_id=send_job_id(answer_id))
        except Exception as exc:
            log.warning(
                "answer to a patient not queued; the cron will: %s",
                type(exc).__name__,
                extra={"message_id": answer_id},
            )


_STUCK = text(
    """
    SELECT id FROM messages
    WHERE send_state = 'pending' AND updated_at < now() - make_interval(secs => :after)
    ORDER BY updated_at LIMIT :limit
    """
)


async def stuck(session: AsyncSession, after_seconds: float, limit: int = 500) -> list[int]:
    """Answers `pending` for longer than `after_seconds`: never queued (Redis was away),
    or their job was lost."""
    rows = await session.scalars(_STUCK, {"after": after_seconds, "limit": limit})
    return list(rows)
