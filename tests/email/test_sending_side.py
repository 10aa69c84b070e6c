"""Where deliverability meets sending: the staff message refused, the claim's
`email_blocked`, the channel's Reply-To and envelope sender."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels import email_headers
from app.channels.base import OutgoingMessage
from app.config import Settings
from app.conversations import service as conversation_service
from app.delivery import repository as delivery_repository
from app.email import addresses
from app.email import status as email_status
from app.email.rules import AddressEvent, AddressEventKind
from app.errors import InvalidInput
from app.security import TokenSigner
from tests.factories import make_notification, make_patient

db_test = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings()
SIGNER = TokenSigner(SETTINGS.secret_key.get_secret_value())


async def block(session: AsyncSession, address: str) -> None:
    await email_status.record(
        session,
        [
            AddressEvent(
                address.lower(),
                AddressEventKind.HARD_BOUNCE,
                "dsn",
                datetime.now(UTC),
                "5.1.1 no such user",
            )
        ],
    )


def fresh() -> str:
    return f"Rahim.{uuid.uuid4().hex[:8]}@mail.example.org"


@db_test
async def test_a_staff_message_to_a_blocked_address_is_a_422(db_session: AsyncSession) -> None:
    address = fresh()
    patient = await make_patient(db_session, email=address)
    conversation = await conversation_service.open_conversation(
        db_session, patient.id, "Your visit", None
    )
    await block(db_session, address)
    with pytest.raises(InvalidInput) as refused:
        await conversation_service.write(
            db_session, SETTINGS, conversation.id, "Are you there?", ["patient"]
        )
    assert "blocked (hard bounce: 5.1.1 no such user)" in refused.value.message
    assert refused.value.details[0]["field"] == "broadcast_to"
    # A note for staff is not sent anywhere: allowed.
    note, state, _ = await conversation_service.write(
        db_session, SETTINGS, conversation.id, "Tried to reach them", []
    )
    assert note.audience == "note" and state is None


@db_test
async def test_the_claim_says_why_an_address_is_blocked(db_session: AsyncSession) -> None:
    blocked_address, fine_address = fresh(), fresh()
    blocked = await make_patient(db_session, email=blocked_address)
    fine = await make_patient(db_session, email=fine_address)
    await block(db_session, blocked_address)
    due = datetime.now(UTC) - timedelta(minutes=1)
    ids = {
        (await make_notification(db_session, blocked, due_at=due)).id: "blocked",
        (await make_notification(db_session, fine, due_at=due)).id: "fine",
    }
    claimed = {
        n.id: n for n in await delivery_repository.claim_due(db_session, 1000) if n.id in ids
    }
    assert len(claimed) == 2
    for notification_id, which in ids.items():
        reason = claimed[notification_id].email_blocked
        if which == "blocked":
            assert reason is not None and "hard bounce" in reason
        else:
            assert reason is None


def outgoing(conversation_id: str = "") -> OutgoingMessage:
    return OutgoingMessage(
        phone_e164="",
        text="x",
        locale="en",
        title="t",
        callback_url="",
        conversation_id=conversation_id,
    )


def test_a_conversation_email_carries_its_signed_reply_to() -> None:
    conversation_id = uuid.uuid4()
    headers = email_headers.conversation_headers(outgoing(str(conversation_id)), SETTINGS)
    token = addresses.tagged(
        headers["Reply-To"], addresses.REPLY_PREFIX, SETTINGS.email_inbound_domain
    )
    assert token is not None
    assert addresses.read_reply_token(SIGNER, token) == conversation_id
    assert email_headers.conversation_headers(outgoing(), SETTINGS) == {}


def test_the_envelope_sender_is_the_recipients_own_bounce_address() -> None:
    sender = email_headers.envelope_sender("Rahim@mail.example.org", SETTINGS)
    token = addresses.tagged(sender, addresses.BOUNCE_PREFIX, SETTINGS.email_inbound_domain)
    assert token is not None
    assert addresses.bounce_token_matches(SIGNER, token, "rahim@mail.example.org")
