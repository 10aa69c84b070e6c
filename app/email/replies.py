"""Inbound email: a reply filed on its conversation, a bounce applied, or kept unmatched.

Whichever way it came (the SMTP receiver, SendGrid's Inbound Parse), a parsed email
(app/email/parsing.py) is stored once per Message-ID and then:

- a delivery status notification (RFC 3464) that arrived at the bounce address of the
  recipient it reports on (app/email/addresses.py) is applied to that address's
  status (a permanent failure blocks it) and, when it quotes the returned email's
  Message-ID, to that email's delivery attempt (`failed`, falling back to the next
  channel; a delay is kept in the raw report log only); one that did not is kept
  `unmatched` (`unverified_bounce`): nobody blocks a patient's address, or fails a
  message, by mailing us a report;
- a reply to `reply+<token>@EMAIL_INBOUND_DOMAIN` whose token verifies and whose one
  From address is the conversation's patient's: when its first line is a consent
  keyword alone (STOP, START, HELP, as an SMS would be), it acts on the patient's
  consent through the same path as an SMS (app/consent), is stored without a
  conversation, and the answer goes back by email; otherwise it is filed on that
  conversation as the patient's message (a closed conversation: a new one, opened by
  the patient, about the same thing); from a staff member's address, it is sent to the
  patient as a staff message would be (app/conversations: consent, blocked address,
  channel chain);
- anything else is kept `unmatched` with the reason, never attached: `not_a_reply`,
  `bad_token`, `unknown_conversation`, `no_sender`, `several_senders`,
  `unknown_sender`, `auto_reply` (an out-of-office answer), `not_sendable` (a staff
  reply the conversation refused: closed, or the patient's address blocked).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.config import Settings
from app.consent import service as consent_service
from app.consent.keywords import Keyword, keyword_of
from app.consent.rules import opted_out_of
from app.conversations import service as conversation_service
from app.email import addresses
from app.email import reports as email_reports
from app.email import repository as email_repository
from app.email import status as email_status
from app.email.parsing import DsnRecipient, ParsedEmail
from app.email.rules import AddressEvent, AddressEventKind, MessageReport
from app.email.text import single_line
from app.errors import AppError
from app.messages import replies as patient_answers
from app.models import Conversation, InboundEmail, Message, Patient
from app.models.conversation import ConversationState
from app.models.inbound_email import InboundOutcome
from app.models.message import Direction
from app.observability import INBOUND_MESSAGES
from app.security import TokenSigner
from app.states import AttemptStatus
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType

log = logging.getLogger(__name__)

EMAIL_CHANNEL = "email"


@dataclass(frozen=True, slots=True)
class Received:
    """What became of one inbound email. `inbound_id` None: a repeat, nothing changed."""

    inbound_id: int | None
    outcome: str
    reason: str | None = None
    conversation_id: uuid.UUID | None = None
    message_id: int | None = None
    # The service's answer to a consent keyword, stored `pending`: the caller hands it to
    # a worker once committed (app/messages/replies.py; a cron does, failing that).
    answer_id: int | None = None

    @property
    def duplicate(self) -> bool:
        return self.inbound_id is None


@dataclass(frozen=True, slots=True)
class _Decision:
    outcome: InboundOutcome
    reason: str | None = None
    recipient: str | None = None
    conversation: Conversation | None = None
    patient: Patient | None = None
    staff_id: str | None = None
    events: tuple[AddressEvent, ...] = ()
    reports: tuple[MessageReport, ...] = ()


async def receive(
    session: AsyncSession,
    settings: Settings,
    email: ParsedEmail,
    *,
    via: str,
    envelope_recipients: Sequence[str] = (),
    now: datetime | None = None,
) -> Received:
    """Store `email` once and act on it (see the module). Flushes; idempotent: the same
    Message-ID again changes nothing."""
    now = now or datetime.now(UTC)
    signer = TokenSigner(settings.secret_key.get_secret_value())
    candidates = _candidates(envelope_recipients, email.recipients)
    if email.dsn is not None:
        decision = _bounce(signer, settings, email, candidates, now)
    else:
        decision = await _reply(session, signer, settings, email, candidates)
    inbound_id = await email_repository.insert_inbound(
        session,
        {
            "dedup_key": email.dedup_key,
            "via": via,
            "outcome": decision.outcome.value,
            "reason": decision.reason,
            "rfc_message_id": email.message_id,
            "sender": email.senders[0] if len(email.senders) == 1 else None,
            "recipient": decision.recipient,
            "subject": email.subject,
            "text": email.text,
            "attachments": [a.as_json() for a in email.attachments],
            "size_bytes": email.size,
            "defects": email.defects[:50],
            "conversation_id": decision.conversation.id if decision.conversation else None,
            "received_at": now,
        },
    )
    if inbound_id is None:
        INBOUND_MESSAGES.labels(EMAIL_CHANNEL, "duplicate").inc()
        return Received(None, "duplicate")
    if decision.events:
        await email_status.record(session, decision.events, now=now)
    await email_reports.apply(session, decision.reports)
    if decision.outcome != InboundOutcome.ATTACHED:
        return await _kept(decision, inbound_id)
    keyword = _consent_keyword(email, decision.patient, settings)
    if keyword is not None:
        return await _consent(session, settings, email, decision, keyword, inbound_id, now)
    try:
        message, conversation_id = await _attach(session, settings, email, decision, now)
    except AppError as refused:
        # A staff reply the conversation would not send: kept, with why.
        await _set_outcome(session, inbound_id, InboundOutcome.UNMATCHED, "not_sendable")
        log.warning(
            "a staff reply by email could not be sent",
            extra={"inbound_email_id": inbound_id, "error": refused.code},
        )
        return await _kept(
            _Decision(InboundOutcome.UNMATCHED, "not_sendable", conversation=decision.conversation),
            inbound_id,
        )
    inbound = await session.get(InboundEmail, inbound_id)
    assert inbound is not None
    inbound.message_id = message.id
    inbound.conversation_id = conversation_id
    await session.flush()
    INBOUND_MESSAGES.labels(EMAIL_CHANNEL, "matched").inc()
    return Received(
        inbound_id, InboundOutcome.ATTACHED, conversation_id=conversation_id, message_id=message.id
    )


def first_line(text: str) -> str:
    """The reply's first line that has anything on it: where a keyword is read. The
    whole line must be the keyword, not only its first word: the keywords include YES
    (START) and CANCEL (STOP), and "Yes, I will come" or "Cancel my Tuesday visit" are
    answers for the clinic, not consent."""
    return next((line for line in text.splitlines() if line.strip()), "")


def _consent_keyword(
    email: ParsedEmail, patient: Patient | None, settings: Settings
) -> Keyword | None:
    """The consent keyword a patient's reply is, if it is one: its first line alone.

    START from a patient who has not opted out of email is no keyword here: the START
    words include YES, and "Yes." is the usual answer to the question the email asked
    (it is filed on the conversation). It lifts an opt-out as by SMS."""
    if patient is None:
        return None
    keyword = keyword_of(first_line(email.text), settings)
    if keyword is Keyword.START and not opted_out_of(patient.opted_out_channels, EMAIL_CHANNEL):
        return None
    return keyword


async def _consent(
    session: AsyncSession,
    settings: Settings,
    email: ParsedEmail,
    decision: _Decision,
    keyword: Keyword,
    inbound_id: int,
    now: datetime,
) -> Received:
    """A patient's STOP, START or HELP by email: acted on by the consent path every
    channel's keywords take, the message stored without a conversation (as an SMS
    keyword is), the answer stored to go back by email."""
    patient = decision.patient
    assert patient is not None
    message = await _store_patient_message(session, email, patient, None, now)
    outcome = await consent_service.apply_keyword(
        session,
        settings,
        keyword,
        patient_id=patient.id,
        locale=patient.locale,
        phone=None,
        channel=EMAIL_CHANNEL,
    )
    answer_id = (
        await patient_answers.record(session, message.id, outcome.reply) if outcome.reply else None
    )
    reason = f"keyword:{keyword.value}"
    inbound = await session.get(InboundEmail, inbound_id)
    assert inbound is not None
    inbound.message_id = message.id
    inbound.reason = reason
    await session.flush()
    INBOUND_MESSAGES.labels(EMAIL_CHANNEL, "matched").inc()
    return Received(
        inbound_id, InboundOutcome.ATTACHED, reason, message_id=message.id, answer_id=answer_id
    )


async def _kept(decision: _Decision, inbound_id: int) -> Received:
    conversation_id = decision.conversation.id if decision.conversation else None
    if decision.outcome == InboundOutcome.UNMATCHED:
        INBOUND_MESSAGES.labels(EMAIL_CHANNEL, "unmatched").inc()
        log.warning(
            "inbound email kept unmatched",
            extra={"inbound_email_id": inbound_id, "reason": decision.reason},
        )
    else:
        INBOUND_MESSAGES.labels(EMAIL_CHANNEL, "bounce").inc()
    return Received(inbound_id, decision.outcome, decision.reason, conversation_id)


async def _set_outcome(
    session: AsyncSession, inbound_id: int, outcome: InboundOutcome, reason: str
) -> None:
    inbound = await session.get(InboundEmail, inbound_id)
    assert inbound is not None
    inbound.outcome = outcome
    inbound.reason = reason
    await session.flush()


def _candidates(envelope: Sequence[str], headers: Sequence[str]) -> list[str]:
    """Where the email was sent: the envelope's recipients first (they are what the
    receiving server was told), then the To, Cc and Delivered-To headers."""
    found: list[str] = []
    for raw in [*envelope, *headers]:
        # Cleaned as the headers' are: the envelope comes as it was given (SendGrid's JSON,
        # an SMTP client's RCPT TO), and an unmatched one is kept (a null was a 500).
        address = single_line(raw, 300).strip("<>").lower()
        if address and address not in found:
            found.append(address)
    return found


def _bounce(
    signer: TokenSigner,
    settings: Settings,
    email: ParsedEmail,
    candidates: list[str],
    now: datetime,
) -> _Decision:
    domain = settings.email_inbound_domain
    tokens = [
        (address, token)
        for address in candidates
        if (token := addresses.tagged(address, addresses.BOUNCE_PREFIX, domain)) is not None
    ]
    events: list[AddressEvent] = []
    reports: list[MessageReport] = []
    recipient = tokens[0][0] if tokens else None
    for report in email.dsn or ():
        match = next(
            (a for a, t in tokens if addresses.bounce_token_matches(signer, t, report.address)),
            None,
        )
        if match is None:
            continue
        recipient = match
        if report.hard_failure:
            kind = AddressEventKind.HARD_BOUNCE
        elif report.action in ("delivered", "relayed", "expanded"):
            kind = AddressEventKind.DELIVERED
        else:
            kind = AddressEventKind.SOFT_BOUNCE
        detail = " ".join(p for p in (report.status, report.diagnostic) if p) or report.action
        event_id = hashlib.sha256(f"{email.dedup_key}\x00{report.address}".encode()).hexdigest()
        events.append(
            AddressEvent(
                report.address, kind, "dsn", now, detail, provider_event_id=f"dsn:{event_id}"
            )
        )
        if email.original_message_id is not None:
            reports.append(_message_report(email.original_message_id, report))
    if not events:
        return _Decision(InboundOutcome.UNMATCHED, "unverified_bounce", recipient=recipient)
    return _Decision(
        InboundOutcome.BOUNCE, recipient=recipient, events=tuple(events), reports=tuple(reports)
    )


def _message_report(message_id: str, report: DsnRecipient) -> MessageReport:
    """What a verified DSN says of the email it returns. `failed` (whatever its status
    class: the server gave up on this email) fails it; `delivered` delivers it; a delay,
    `relayed` or `expanded` prove nothing and are kept in the raw report log only."""
    if report.action == "failed":
        status = AttemptStatus.FAILED
    elif report.action == "delivered":
        status = AttemptStatus.DELIVERED
    else:
        status = AttemptStatus.SENT
    return MessageReport(
        message_id,
        report.address,
        status,
        f"dsn:{report.action or 'unknown'}"[:50],
        error_code=report.status or None,
        detail=report.diagnostic or None,
        failure="bounced",
    )


async def _reply(
    session: AsyncSession,
    signer: TokenSigner,
    settings: Settings,
    email: ParsedEmail,
    candidates: list[str],
) -> _Decision:
    domain = settings.email_inbound_domain
    tagged = [
        (address, token)
        for address in candidates
        if (token := addresses.tagged(address, addresses.REPLY_PREFIX, domain)) is not None
    ]
    if not tagged:
        return _Decision(InboundOutcome.UNMATCHED, "not_a_reply")
    verified = [
        (address, conversation_id)
        for address, token in tagged
        if (conversation_id := addresses.read_reply_token(signer, token)) is not None
    ]
    if not verified:
        return _Decision(InboundOutcome.UNMATCHED, "bad_token", recipient=tagged[0][0])
    recipient, conversation_id = verified[0]
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        return _Decision(InboundOutcome.UNMATCHED, "unknown_conversation", recipient=recipient)
    unmatched = _Decision(InboundOutcome.UNMATCHED, recipient=recipient, conversation=conversation)
    if email.auto_reply:
        return _with_reason(unmatched, "auto_reply")
    if not email.senders:
        return _with_reason(unmatched, "no_sender")
    if len(email.senders) > 1:
        return _with_reason(unmatched, "several_senders")
    sender = email.senders[0]
    patient = await session.get(Patient, conversation.patient_id)
    if patient is not None and (patient.email or "").lower() == sender:
        return _Decision(
            InboundOutcome.ATTACHED, recipient=recipient, conversation=conversation, patient=patient
        )
    staff_id = await email_repository.staff_with_address(session, sender)
    if staff_id is not None:
        return _Decision(
            InboundOutcome.ATTACHED,
            recipient=recipient,
            conversation=conversation,
            staff_id=staff_id,
        )
    return _with_reason(unmatched, "unknown_sender")


def _with_reason(decision: _Decision, reason: str) -> _Decision:
    return _Decision(
        decision.outcome, reason, recipient=decision.recipient, conversation=decision.conversation
    )


async def _attach(
    session: AsyncSession,
    settings: Settings,
    email: ParsedEmail,
    decision: _Decision,
    now: datetime,
) -> tuple[Message, uuid.UUID]:
    conversation = decision.conversation
    assert conversation is not None
    if decision.staff_id is not None:
        message, _, _ = await conversation_service.write(
            session, settings, conversation.id, email.text, ["patient"], now=now
        )
        return message, conversation.id
    if conversation.state != ConversationState.OPEN:
        conversation = await conversation_service.follow_up(session, conversation, now)
    assert decision.patient is not None
    conversation.last_activity_at = now
    message = await _store_patient_message(session, email, decision.patient, conversation.id, now)
    return message, conversation.id


async def _store_patient_message(
    session: AsyncSession,
    email: ParsedEmail,
    patient: Patient,
    conversation_id: uuid.UUID | None,
    now: datetime,
) -> Message:
    """The patient's email as a message `in` (on `conversation_id`, if any), and its
    `message.received`. Flushes."""
    message = Message(
        direction=Direction.IN,
        channel=EMAIL_CHANNEL,
        provider_message_id=f"email:{email.dedup_key}",
        patient_id=patient.id,
        text=email.text,
        media=[a.as_json() for a in email.attachments],
        received_at=now,
        conversation_id=conversation_id,
    )
    session.add(message)
    await session.flush()
    await webhook_service.emit(
        session,
        EventType.MESSAGE_RECEIVED,
        patient.id,
        {
            "message_id": message.id,
            "patient_id": patient.id,
            "channel": EMAIL_CHANNEL,
            "from": email.senders[0],
            "text": email.text,
            "media": [a.as_json() for a in email.attachments],
            "received_at": now.isoformat(),
            "conversation_id": str(conversation_id) if conversation_id else None,
        },
    )
    return message


async def unmatched(
    session: AsyncSession, cursor: str | None, limit: int
) -> tuple[list[InboundEmail], str | None]:
    """Inbound emails kept unmatched, newest first."""
    after = pagination.decode(cursor, datetime, int) if cursor else None
    rows = await email_repository.unmatched_page(
        session, (after[0], after[1]) if after else None, limit
    )
    return pagination.split(rows, limit, lambda r: (r.received_at, r.id))
