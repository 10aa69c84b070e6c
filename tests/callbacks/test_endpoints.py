"""Provider webhooks through the real app, on the test's rolled-back transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import callback_urls
from app.channels import twilio_signature
from app.config import Settings
from app.main import create_app
from app.models import DeliveryAttempt, ImoAuthorization, Notification
from app.security import TokenSigner
from tests.factories import api_client, make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "callback-test-twilio-token"
BASE = "https://notify.example.org"
SETTINGS = Settings(app_env="test", twilio_auth_token=TOKEN, public_base_url=BASE)
SIGNER = TokenSigner(SETTINGS.secret_key.get_secret_value())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def callback_app() -> AsyncIterator[FastAPI]:
    # Built here: the database URL is known only once the session's services run.
    app = create_app(Settings(app_env="test", twilio_auth_token=TOKEN, public_base_url=BASE))
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    callback_app: FastAPI, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(callback_app, db_sessionmaker) as c:
        yield c


async def sent_attempt(
    session: AsyncSession, channel: str = "sms", *, chain: list[str] | None = None, **values: Any
) -> tuple[Notification, DeliveryAttempt]:
    patient = await make_patient(session)
    session.add(
        ImoAuthorization(patient_id=patient.id, status="subscribed")
    ) if channel == "imo" else None
    notification = await make_notification(
        session, patient, state="sent", channel_chain=chain or [channel], channel_index=0
    )
    attempt = DeliveryAttempt(
        notification_id=notification.id, channel=channel, status="sent", **values
    )
    session.add(attempt)
    await session.flush()
    return notification, attempt


async def states(
    session: AsyncSession, notification: Notification, attempt: DeliveryAttempt
) -> tuple[str, str]:
    await session.refresh(notification)
    await session.refresh(attempt)
    return notification.state, attempt.status


def twilio_post(
    client: httpx.AsyncClient, attempt_id: int, params: dict[str, str], *, sign: bool = True
) -> Any:
    path = f"/callbacks/twilio/status/{attempt_id}"
    headers = {}
    if sign:
        headers["X-Twilio-Signature"] = twilio_signature.sign(TOKEN, BASE + path, params)
    return client.post(path, data=params, headers=headers)


def status_params(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC1", **extra}


class TestImoReadReceipt:
    async def test_marks_attempt_and_notification_read_once(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo", provider_message_id="post-1")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        first = await client.post(url, json={"event": "read_receipt", "post_id": "post-1"})
        assert first.status_code == 200 and first.json() == {"status": "ok", "changed": True}
        assert await states(db_session, notification, attempt) == ("read", "read")
        assert notification.read_at is not None and attempt.read_at is not None
        # Imo repeats itself; a repeat is a 200 that changes nothing.
        again = await client.post(url, data={"event": "read_receipt", "post_id": "post-1"})
        assert again.status_code == 200 and again.json()["changed"] is False

    async def test_forged_or_misused_tokens_are_404_and_change_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo")
        body = {"event": "read_receipt", "post_id": "x"}
        other_purpose = SIGNER.sign(callback_urls.IMO_INVITATION, str(attempt.id))
        forged = TokenSigner("another key").sign(callback_urls.IMO_READ, str(attempt.id))
        for token in (other_purpose, forged, "garbage", f"{attempt.id}"):
            answer = await client.post(f"/callbacks/imo/notifications/{token}", json=body)
            assert answer.status_code == 404, token
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_a_post_id_of_another_message_is_refused(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo", provider_message_id="mine")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        answer = await client.post(url, json={"event": "read_receipt", "post_id": "theirs"})
        assert answer.status_code == 404
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_unknown_event_or_garbage_is_400(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        _, attempt = await sent_attempt(db_session, "imo")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        assert (await client.post(url, json={"event": "delivered"})).status_code == 400
        garbage = await client.post(url, content=b"{not json", headers={"content-type": "x"})
        assert garbage.status_code == 400
        assert garbage.json()["error"]["code"] == "bad_callback"

    async def test_an_oversized_body_is_413_and_changes_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        padding = "x" * (64 * 1024)
        answer = await client.post(url, json={"event": "read_receipt", "padding": padding})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"
        assert await states(db_session, notification, attempt) == ("sent", "sent")


class TestImoInvitation:
    async def test_accept_subscribes_the_patient_idempotently(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        url = callback_urls.imo_invitation_url(SETTINGS, SIGNER, patient.id).removeprefix(BASE)
        for encoding in (
            {"json": {"event": "accept_invite"}},
            {"data": {"event": "accept_invite"}},
        ):
            answer = await client.post(url, **encoding)  # type: ignore[arg-type]
            assert answer.status_code == 200
        authorization = await db_session.scalar(
            select(ImoAuthorization).where(ImoAuthorization.patient_id == patient.id)
        )
        assert authorization is not None and authorization.status == "subscribed"
        assert authorization.subscribed_at is not None

    async def test_a_token_for_another_patient_cannot_be_made(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        token = SIGNER.sign(callback_urls.IMO_INVITATION, patient.id)
        _, mac = token.split(".")
        other = TokenSigner("x").sign(callback_urls.IMO_INVITATION, "someone-else").split(".")[0]
        answer = await client.post(
            f"/callbacks/imo/invitations/{other}.{mac}", json={"event": "accept_invite"}
        )
        assert answer.status_code == 404


class TestTwilioStatus:
    async def test_delivered_with_a_valid_signature(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        answer = await twilio_post(client, attempt.id, status_params("SM1", "delivered"))
        assert answer.status_code == 200
        assert await states(db_session, notification, attempt) == ("delivered", "delivered")
        assert attempt.provider_status == "delivered"

    @pytest.mark.parametrize("signature", [None, "bad", "tampered"])
    async def test_bad_or_missing_signature_is_403_and_changes_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession, signature: str | None
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        params = status_params("SM1", "delivered")
        path = f"/callbacks/twilio/status/{attempt.id}"
        headers = {}
        if signature == "bad":
            headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
        elif signature == "tampered":
            headers["X-Twilio-Signature"] = twilio_signature.sign(
                TOKEN, BASE + path, {**params, "MessageStatus": "failed"}
            )
        answer = await client.post(path, data=params, headers=headers)
        assert answer.status_code == 403
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_out_of_order_callbacks_never_go_backwards(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        for status in ("delivered", "sent", "queued", "undelivered", "delivered"):
            answer = await twilio_post(client, attempt.id, status_params("SM1", status))
            assert answer.status_code == 200
        assert await states(db_session, notification, attempt) == ("delivered", "delivered")

    async def test_undelivered_on_the_last_channel_fails_with_the_reason(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        params = status_params("SM1", "undelivered", ErrorCode="30003")
        assert (await twilio_post(client, attempt.id, params)).status_code == 200
        assert await states(db_session, notification, attempt) == ("failed", "failed")
        assert attempt.error_code == "30003"
        assert notification.failure_reason is not None and "sms" in notification.failure_reason

    async def test_failure_with_a_channel_left_falls_back(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(
            db_session, provider_message_id="SM1", chain=["sms", "whatsapp"]
        )
        assert (await twilio_post(client, attempt.id, status_params("SM1", "failed"))).is_success
        await db_session.refresh(notification)
        assert (notification.state, notification.channel_index) == ("scheduled", 1)

    async def test_unknown_attempt_or_other_message_is_404(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        _, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        assert (
            await twilio_post(client, 987654321, status_params("SM1", "sent"))
        ).status_code == 404
        other = await twilio_post(client, attempt.id, status_params("SM-other", "delivered"))
        assert other.status_code == 404

    async def test_unknown_status_is_accepted_and_ignored(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        answer = await twilio_post(client, attempt.id, status_params("SM1", "teleported"))
        assert answer.status_code == 200 and answer.json()["changed"] is False
        assert await states(db_session, notification, attempt) == ("sent", "sent")


class TestTwilioInbound:
    async def test_signed_inbound_is_acknowledged(self, client: httpx.AsyncClient) -> None:
        params = {"MessageSid": "SM9", "From": "+8801711000003", "Body": "hello"}
        path = "/callbacks/twilio/inbound"
        signed = twilio_signature.sign(TOKEN, BASE + path, params)
        answer = await client.post(path, data=params, headers={"X-Twilio-Signature": signed})
        assert answer.status_code == 200 and "<Response/>" in answer.text
        assert (await client.post(path, data=params)).status_code == 403
