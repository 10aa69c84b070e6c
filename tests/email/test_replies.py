"""Inbound email filed: on its conversation, as a bounce, or kept unmatched."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import ChannelName, OutgoingMessage, SendResult
from app.config import Settings
from app.conversations import service as conversation_service
from app.email import addresses, replies
from app.email import status as email_status
from app.email.parsing import parse
from app.email.rules import AddressEvent, AddressEventKind
from app.messages import replies as patient_answers
from app.models import Conversation, InboundEmail, Message, Patient, StaffMember, WebhookEvent
from app.security import TokenSigner
from tests.email import mail
from tests.email.attempts import raw_log, reloaded, sent_email
from tests.factories import make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings()
SIGNER = TokenSigner(SETTINGS.secret_key.get_secret_value())
DOMAIN = SETTINGS.email_inbound_domain


def unique_address(name: str = "rahim") -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}@example.com"


async def conversation_with(session: AsyncSession, email: str | None) -> Conversation:
    patient = await make_patient(session, email=email)
    return await conversation_service.open_conversation(session, patient.id, "Your visit", "a-1")


@dataclass
class StubEmail:
    sent: list[OutgoingMessage] = field(default_factory=list)
    name: ChannelName = ChannelName.EMAIL
    base_url: str = "smtp://stub"

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        return SendResult(
            provider_message_id=f"{uuid.uuid4().hex}@clinic.example", provider_status="250"
        )


async def receive(session: AsyncSession, raw: bytes, **kwargs: object) -> replies.Received:
    email = parse(io.BytesIO(raw), ["en"])
    return await replies.receive(session, SETTINGS, email, via="smtp", **kwargs)  # type: ignore[arg-type]


class TestPatientReply:
    async def test_filed_on_its_conversation_without_the_quote(
        self, db_session: AsyncSession
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender.capitalize())
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        received = await receive(db_session, mail.reply(sender=sender, to=to))
        assert received.outcome == "attached"
        assert received.conversation_id == conversation.id
        message = await db_session.get(Message, received.message_id)
        assert message is not None
        assert message.direction == "in" and message.channel == "email"
        assert message.text == "Yes, I will come on Tuesday."
        assert message.patient_id == conversation.patient_id
        event = await db_session.scalar(
            select(WebhookEvent).where(
                WebhookEvent.type == "message.received",
                WebhookEvent.patient_id == conversation.patient_id,
            )
        )
        assert event is not None and event.data["channel"] == "email"

    async def test_the_same_message_again_changes_nothing(self, db_session: AsyncSession) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        raw = mail.reply(sender=sender, to=addresses.reply_address(SIGNER, DOMAIN, conversation.id))
        first = await receive(db_session, raw)
        again = await receive(db_session, raw)
        assert first.outcome == "attached"
        assert again.duplicate
        count = await db_session.scalar(
            select(Message.id).where(Message.conversation_id == conversation.id).limit(2)
        )
        assert count == first.message_id

    async def test_the_envelope_names_the_reply_address_when_the_headers_do_not(
        self, db_session: AsyncSession
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        received = await receive(
            db_session,
            mail.reply(sender=sender, to="clinic@clinic.example"),
            envelope_recipients=[addresses.reply_address(SIGNER, DOMAIN, conversation.id)],
        )
        assert received.outcome == "attached"

    async def test_a_reply_to_a_closed_conversation_opens_a_new_one(
        self, db_session: AsyncSession
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        await conversation_service.close(db_session, conversation.id)
        received = await receive(
            db_session,
            mail.reply(sender=sender, to=addresses.reply_address(SIGNER, DOMAIN, conversation.id)),
        )
        assert received.outcome == "attached"
        assert received.conversation_id != conversation.id
        follow_up = await db_session.get(Conversation, received.conversation_id)
        assert follow_up is not None
        assert (follow_up.reference, follow_up.state) == ("a-1", "open")


class TestConsentKeywords:
    """STOP, START and HELP alone on a reply's first line act on consent through the
    path an SMS keyword takes; the answer goes back by email."""

    async def test_stop_opts_the_patient_out_and_is_answered_by_email(
        self, db_session: AsyncSession
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        received = await receive(db_session, mail.reply(sender=sender, to=to, text="Stop."))
        assert (received.outcome, received.reason) == ("attached", "keyword:stop")
        patient = await db_session.get(Patient, conversation.patient_id, populate_existing=True)
        assert patient is not None and list(patient.opted_out_channels) == ["*"]
        # Stored as the patient's message, on no conversation (as an SMS keyword is).
        message = await db_session.get(Message, received.message_id)
        assert message is not None
        assert (message.channel, message.conversation_id) == ("email", None)
        # The answer, to go back by email to the patient.
        assert received.answer_id is not None
        answer = await db_session.get(Message, received.answer_id)
        assert answer is not None
        assert (answer.direction, answer.channel, answer.audience, answer.send_state) == (
            "out",
            "email",
            "reply",
            "pending",
        )
        changed = await db_session.scalar(
            select(WebhookEvent).where(
                WebhookEvent.type == "consent.changed",
                WebhookEvent.patient_id == conversation.patient_id,
            )
        )
        assert changed is not None
        assert (changed.data["source"], changed.data["channel"]) == ("keyword:stop", "email")

    @pytest.mark.parametrize("blocked", [False, True])
    async def test_the_answer_goes_to_the_patients_address(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        blocked: bool,
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        received = await receive(db_session, mail.reply(sender=sender, to=to, text="HELP"))
        assert received.reason == "keyword:help" and received.answer_id is not None
        if blocked:
            await email_status.record(
                db_session,
                [AddressEvent(sender, AddressEventKind.COMPLAINT, "sendgrid", datetime.now(UTC))],
            )
        await db_session.commit()
        channel = StubEmail()
        sent = await patient_answers.send(
            db_sessionmaker,
            Settings(app_env="test", fake_providers=True),
            {"email": channel},  # type: ignore[dict-item]
            received.answer_id,
            last_try=True,
        )
        if blocked:
            assert (sent.state, channel.sent) == ("failed", [])
            assert sent.failure_reason == "the patient's email address is blocked"
            return
        assert sent.state == "sent"
        [message] = channel.sent
        assert (message.email, message.phone_e164) == (sender, "")
        assert message.title and message.text.startswith(message.title.rstrip("\u2026"))

    async def test_start_lifts_it(self, db_session: AsyncSession) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        await receive(db_session, mail.reply(sender=sender, to=to, text="STOP"))
        received = await receive(db_session, mail.reply(sender=sender, to=to, text="START"))
        assert received.reason == "keyword:start"
        patient = await db_session.get(Patient, conversation.patient_id, populate_existing=True)
        assert patient is not None and list(patient.opted_out_channels) == []

    @pytest.mark.parametrize(
        "text",
        [
            "Yes, I will come on Tuesday.",
            "Cancel my Tuesday visit please",
            "Stop by at ten?",
            # YES is a START word; from a patient who has not opted out, an answer.
            "Yes.",
            "START",
        ],
    )
    async def test_a_sentence_is_an_answer_for_the_clinic_not_consent(
        self, db_session: AsyncSession, text: str
    ) -> None:
        """YES (START) and CANCEL (STOP) are keywords: only alone on the first line; and
        START only lifts an opt-out."""
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        received = await receive(db_session, mail.reply(sender=sender, to=to, text=text))
        assert (received.outcome, received.reason) == ("attached", None)
        assert received.conversation_id == conversation.id
        patient = await db_session.get(Patient, conversation.patient_id, populate_existing=True)
        assert patient is not None and list(patient.opted_out_channels) == []

    async def test_from_someone_else_it_changes_no_consent(self, db_session: AsyncSession) -> None:
        conversation = await conversation_with(db_session, unique_address())
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        received = await receive(
            db_session, mail.reply(sender=unique_address(), to=to, text="STOP")
        )
        assert (received.outcome, received.reason) == ("unmatched", "unknown_sender")
        patient = await db_session.get(Patient, conversation.patient_id, populate_existing=True)
        assert patient is not None and list(patient.opted_out_channels) == []


class TestStaffReply:
    async def test_goes_to_the_patient_as_a_staff_message(self, db_session: AsyncSession) -> None:
        conversation = await conversation_with(db_session, unique_address())
        staff_address = unique_address("nurse")
        db_session.add(
            StaffMember(
                id=f"s-{uuid.uuid4().hex[:8]}", name="Nurse", email=staff_address, locale="en"
            )
        )
        await db_session.flush()
        received = await receive(
            db_session,
            mail.reply(
                sender=staff_address.upper(),
                to=addresses.reply_address(SIGNER, DOMAIN, conversation.id),
                text="Please bring your card.",
            ),
        )
        assert received.outcome == "attached"
        message = await db_session.get(Message, received.message_id)
        assert message is not None
        assert (message.direction, message.audience) == ("out", "patient")
        assert message.text == "Please bring your card."
        assert message.notification_id is not None


class TestUnmatched:
    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ("stranger", "unknown_sender"),
            ("forged_token", "bad_token"),
            ("no_reply_address", "not_a_reply"),
            ("auto_reply", "auto_reply"),
            ("two_senders", "several_senders"),
            ("no_conversation", "unknown_conversation"),
        ],
    )
    async def test_kept_with_the_reason_never_attached(
        self, db_session: AsyncSession, change: str, reason: str
    ) -> None:
        sender = unique_address()
        conversation = await conversation_with(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
        raw = mail.reply(sender=sender, to=to)
        if change == "stranger":
            raw = mail.reply(sender=unique_address("stranger"), to=to)
        elif change == "forged_token":
            token = addresses.reply_token(SIGNER, conversation.id)
            raw = mail.reply(sender=sender, to=f"reply+{token[:-2]}aa@{DOMAIN}")
        elif change == "no_reply_address":
            raw = mail.reply(sender=sender, to=f"clinic@{DOMAIN}")
        elif change == "auto_reply":
            raw = mail.reply(sender=sender, to=to, extra_headers="Auto-Submitted: auto-replied\r\n")
        elif change == "two_senders":
            raw = raw.replace(
                f"From: Rahim Uddin <{sender}>".encode(), f"From: {sender}, x@example.org".encode()
            )
        elif change == "no_conversation":
            raw = mail.reply(
                sender=sender, to=addresses.reply_address(SIGNER, DOMAIN, uuid.uuid4())
            )
        received = await receive(db_session, raw)
        assert (received.outcome, received.reason) == ("unmatched", reason)
        assert received.message_id is None
        stored = await db_session.get(InboundEmail, received.inbound_id)
        assert stored is not None
        assert stored.message_id is None
        assert stored.text  # the text is kept, not lost
        attached = await db_session.scalar(
            select(Message.id).where(
                Message.conversation_id == conversation.id, Message.direction == "in"
            )
        )
        assert attached is None


class TestBounce:
    async def test_a_dsn_at_the_recipients_bounce_address_blocks_it(
        self, db_session: AsyncSession
    ) -> None:
        recipient = unique_address()
        received = await receive(
            db_session,
            mail.dsn(recipient, to=addresses.bounce_address(SIGNER, DOMAIN, recipient)),
        )
        assert received.outcome == "bounce"
        page = await email_status.status(db_session, recipient, None, 10)
        assert page.status == "blocked"
        assert page.reason is not None and "5.1.1" in page.reason
        assert [e.event for e in page.history] == ["hard_bounce"]
        assert page.history[0].source == "dsn"

    async def test_a_dsn_anywhere_else_blocks_nothing(self, db_session: AsyncSession) -> None:
        recipient = unique_address()
        other = addresses.bounce_address(SIGNER, DOMAIN, unique_address())
        for to in (other, f"postmaster@{DOMAIN}"):
            received = await receive(db_session, mail.dsn(recipient, to=to))
            assert (received.outcome, received.reason) == ("unmatched", "unverified_bounce")
        assert (await email_status.status(db_session, recipient, None, 10)).status == "unknown"

    async def test_a_delay_is_history_only(self, db_session: AsyncSession) -> None:
        recipient = unique_address()
        await receive(
            db_session,
            mail.dsn(
                recipient,
                to=addresses.bounce_address(SIGNER, DOMAIN, recipient),
                action="delayed",
                status="4.4.7",
            ),
        )
        page = await email_status.status(db_session, recipient, None, 10)
        assert page.status == "unknown"
        assert [e.event for e in page.history] == ["soft_bounce"]


class TestBounceOnItsAttempt:
    """A verified DSN that quotes the returned email's Message-ID fails that email's
    attempt, as a provider's failure report would."""

    @pytest.mark.parametrize("returned", ["text/rfc822-headers", "message/rfc822"])
    async def test_a_hard_bounce_fails_the_attempt_and_falls_back(
        self, db_session: AsyncSession, returned: str
    ) -> None:
        recipient = unique_address()
        notification, attempt = await sent_email(db_session, recipient)
        raw = mail.dsn(
            recipient,
            to=addresses.bounce_address(SIGNER, DOMAIN, recipient),
            original_message_id=attempt.provider_message_id,
            returned=returned,
        )
        received = await receive(db_session, raw)
        assert received.outcome == "bounce"
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, attempt.error_code) == ("failed", "5.1.1")
        assert attempt.provider_status == "dsn:failed"
        assert (notification.state, notification.channel_index) == ("scheduled", 1)
        assert (notification.failure_reason or "").startswith("email: bounced: ")
        page = await email_status.status(db_session, recipient, None, 10)
        assert page.status == "blocked"
        # Once more (the sending server retries): a repeat, nothing moves again.
        assert (await receive(db_session, raw)).duplicate
        assert len(await raw_log(db_session, attempt)) == 1

    async def test_a_delay_is_the_raw_log_only(self, db_session: AsyncSession) -> None:
        recipient = unique_address()
        notification, attempt = await sent_email(db_session, recipient)
        await receive(
            db_session,
            mail.dsn(
                recipient,
                to=addresses.bounce_address(SIGNER, DOMAIN, recipient),
                action="delayed",
                status="4.4.7",
                original_message_id=attempt.provider_message_id,
            ),
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert await raw_log(db_session, attempt) == [("sent", "dsn:delayed", False)]

    async def test_a_bounce_after_delivery_changes_nothing(self, db_session: AsyncSession) -> None:
        recipient = unique_address()
        notification, attempt = await sent_email(db_session, recipient)
        attempt.status, notification.state = "delivered", "delivered"
        await db_session.flush()
        await receive(
            db_session,
            mail.dsn(
                recipient,
                to=addresses.bounce_address(SIGNER, DOMAIN, recipient),
                original_message_id=attempt.provider_message_id,
            ),
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, attempt.error_code, notification.state) == (
            "delivered",
            None,
            "delivered",
        )
        assert await raw_log(db_session, attempt) == [("failed", "dsn:failed", False)]

    async def test_an_unverified_bounce_fails_nothing(self, db_session: AsyncSession) -> None:
        """Sent anywhere but the recipient's own bounce address, a report naming the
        email's Message-ID is kept unmatched: nobody fails a message by mailing us."""
        recipient = unique_address()
        notification, attempt = await sent_email(db_session, recipient)
        for to in (
            addresses.bounce_address(SIGNER, DOMAIN, unique_address()),
            f"postmaster@{DOMAIN}",
        ):
            received = await receive(
                db_session,
                mail.dsn(recipient, to=to, original_message_id=attempt.provider_message_id),
            )
            assert received.reason == "unverified_bounce"
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert await raw_log(db_session, attempt) == []

    async def test_without_the_message_id_only_the_address_is_blocked(
        self, db_session: AsyncSession
    ) -> None:
        recipient = unique_address()
        notification, attempt = await sent_email(db_session, recipient)
        await receive(
            db_session, mail.dsn(recipient, to=addresses.bounce_address(SIGNER, DOMAIN, recipient))
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert attempt.status == "sent"
        assert (await email_status.status(db_session, recipient, None, 10)).status == "blocked"
