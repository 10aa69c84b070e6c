"""`notify smtp-inbound`'s server over a real socket, with the standard library's client."""

from __future__ import annotations

import asyncio
import os
import smtplib
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.conversations import service as conversation_service
from app.email import addresses
from app.email.smtp_receiver import serve
from app.models import InboundEmail, Message
from app.security import TokenSigner
from tests.email import mail
from tests.factories import make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_BYTES = 1024 * 1024


@pytest_asyncio.fixture(loop_scope="session")
async def receiver(
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[int]:
    settings = Settings(email_inbound_max_bytes=MAX_BYTES)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, db_sessionmaker, "127.0.0.1", 0, listening=listening, stop=stop)
    )
    port = await asyncio.wait_for(listening, 10)
    try:
        yield port
    finally:
        stop.set()
        await task


def send(port: int, recipients: list[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        return smtp.sendmail("sender@example.com", recipients, raw)


SIGNER = TokenSigner(Settings().secret_key.get_secret_value())
DOMAIN = Settings().email_inbound_domain


async def test_a_reply_by_smtp_lands_on_its_conversation(
    receiver: int, db_session: AsyncSession
) -> None:
    sender = f"p.{uuid.uuid4().hex[:8]}@example.com"
    patient = await make_patient(db_session, email=sender)
    conversation = await conversation_service.open_conversation(
        db_session, patient.id, "Your visit", None
    )
    to = addresses.reply_address(SIGNER, DOMAIN, conversation.id)
    raw = mail.reply(sender=sender, to=to, text="Coming.\r\n.\r\nA dot line above.")
    refused = await asyncio.to_thread(send, receiver, [to], raw)
    assert refused == {}
    text = await db_session.scalar(
        select(Message.text).where(Message.conversation_id == conversation.id)
    )
    assert text == "Coming.\n.\nA dot line above."


async def test_mail_for_another_domain_is_refused_at_rcpt(receiver: int) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send, receiver, ["someone@example.org"], mail.reply())
    assert refused.value.recipients["someone@example.org"][0] == 550


async def test_a_message_past_the_limit_is_refused_with_552(receiver: int) -> None:
    to = f"reply+x@{DOMAIN}"
    raw = mail.with_attachment(os.urandom(MAX_BYTES), sender="a@example.com", to=to)
    # A client that declares the size (ESMTP SIZE) is refused before it sends a byte.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await asyncio.to_thread(send, receiver, [to], raw)
    assert refused.value.smtp_code == 552

    def undeclared() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", receiver, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("sender@example.com")
            smtp.rcpt(to)
            return smtp.data(raw)

    # One that does not is read to the end (into nothing) and then refused.
    code, _ = await asyncio.to_thread(undeclared)
    assert code == 552


async def test_a_bounce_by_smtp_blocks_the_address(receiver: int, db_session: AsyncSession) -> None:
    recipient = f"gone.{uuid.uuid4().hex[:8]}@example.com"
    bounce_to = addresses.bounce_address(SIGNER, DOMAIN, recipient)
    await asyncio.to_thread(send, receiver, [bounce_to], mail.dsn(recipient, to=bounce_to))
    stored = await db_session.scalar(
        select(InboundEmail).where(InboundEmail.recipient == bounce_to.lower())
    )
    assert stored is not None and stored.outcome == "bounce"


async def test_a_database_failure_is_a_451_so_the_sender_retries(
    receiver: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.email import replies

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionError("database gone"))

    monkeypatch.setattr(replies, "receive", unavailable)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, receiver, [f"reply+x@{DOMAIN}"], mail.reply())
    assert refused.value.smtp_code == 451
