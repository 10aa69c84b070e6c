"""Provider webhooks through the real app, on the test's rolled-back transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import callback_urls
from app.channels import twilio_signature
from app.config import Settings
from app.delivery.report_batcher import ReportBatcher
from app.models import DeliveryAttempt, DeliveryReport, ImoAuthorization, Notification
from app.security import TokenSigner
from tests.factories import make_notification, make_patient, running_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "callback-test-twilio-token"
BASE = "https://notify.example.org"
SETTINGS = Settings(app_env="test", twilio_auth_token=TOKEN, public_base_url=BASE)
SIGNER = TokenSigner(SETTINGS.secret_key.get_secret_value())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_app() -> AsyncIterator[FastAPI]:
    """The app with a Twilio token and a public URL, so that signatures can be checked.
    Built here: the database URL is known only once the session's services run."""
    async with running_app(
        Settings(app_env="test", twilio_auth_token=TOKEN, public_base_url=BASE)
    ) as app:
        yield app


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
    api: httpx.AsyncClient, attempt_id: int, params: dict[str, str], *, sign: bool = True
) -> Any:
    path = f"/callbacks/twilio/status/{attempt_id}"
    headers = {}
    if sign:
        headers["X-Twilio-Signature"] = twilio_signature.sign(TOKEN, BASE + path, params)
    return api.post(path, data=params, headers=headers)


def status_params(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC1", **extra}


class TestImoReadReceipt:
    async def test_marks_attempt_and_notification_read_once(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo", provider_message_id="post-1")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        first = await api.post(url, json={"event": "read_receipt", "post_id": "post-1"})
        assert first.status_code == 200 and first.json() == {"status": "ok", "changed": True}
        assert await states(db_session, notification, attempt) == ("read", "read")
        assert notification.read_at is not None and attempt.read_at is not None
        # Imo repeats itself; a repeat is a 200 that changes nothing.
        again = await api.post(url, data={"event": "read_receipt", "post_id": "post-1"})
        assert again.status_code == 200 and again.json()["changed"] is False

    async def test_forged_or_misused_tokens_are_404_and_change_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo")
        body = {"event": "read_receipt", "post_id": "x"}
        other_purpose = SIGNER.sign(callback_urls.IMO_INVITATION, str(attempt.id))
        forged = TokenSigner("another key").sign(callback_urls.IMO_READ, str(attempt.id))
        for token in (other_purpose, forged, "garbage", f"{attempt.id}"):
            answer = await api.post(f"/callbacks/imo/notifications/{token}", json=body)
            assert answer.status_code == 404, token
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_a_post_id_of_another_message_is_refused(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo", provider_message_id="mine")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        answer = await api.post(url, json={"event": "read_receipt", "post_id": "theirs"})
        assert answer.status_code == 404
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_unknown_event_or_garbage_is_400(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        _, attempt = await sent_attempt(db_session, "imo")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        assert (await api.post(url, json={"event": "delivered"})).status_code == 400
        garbage = await api.post(url, content=b"{not json", headers={"content-type": "x"})
        assert garbage.status_code == 400
        assert garbage.json()["error"]["code"] == "bad_callback"

    async def test_an_oversized_body_is_413_and_changes_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, "imo")
        url = callback_urls.imo_read_receipt_url(SETTINGS, SIGNER, attempt.id).removeprefix(BASE)
        padding = "x" * (64 * 1024)
        answer = await api.post(url, json={"event": "read_receipt", "padding": padding})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"
        assert await states(db_session, notification, attempt) == ("sent", "sent")


class TestImoInvitation:
    async def test_accept_subscribes_the_patient_idempotently(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        url = callback_urls.imo_invitation_url(SETTINGS, SIGNER, patient.id).removeprefix(BASE)
        for encoding in (
            {"json": {"event": "accept_invite"}},
            {"data": {"event": "accept_invite"}},
        ):
            answer = await api.post(url, **encoding)  # type: ignore[arg-type]
            assert answer.status_code == 200
        authorization = await db_session.scalar(
            select(ImoAuthorization).where(ImoAuthorization.patient_id == patient.id)
        )
        assert authorization is not None and authorization.status == "subscribed"
        assert authorization.subscribed_at is not None

    async def test_a_token_for_another_patient_cannot_be_made(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        token = SIGNER.sign(callback_urls.IMO_INVITATION, patient.id)
        _, mac = token.split(".")
        other = TokenSigner("x").sign(callback_urls.IMO_INVITATION, "someone-else").split(".")[0]
        answer = await api.post(
            f"/callbacks/imo/invitations/{other}.{mac}", json={"event": "accept_invite"}
        )
        assert answer.status_code == 404


class TestTwilioStatus:
    async def test_delivered_with_a_valid_signature(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        answer = await twilio_post(api, attempt.id, status_params("SM1", "delivered"))
        assert answer.status_code == 200
        assert await states(db_session, notification, attempt) == ("delivered", "delivered")
        assert attempt.provider_status == "delivered"

    @pytest.mark.parametrize("signature", [None, "bad", "tampered"])
    async def test_bad_or_missing_signature_is_403_and_changes_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession, signature: str | None
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
        answer = await api.post(path, data=params, headers=headers)
        assert answer.status_code == 403
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_out_of_order_callbacks_never_go_backwards(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        for status in ("delivered", "sent", "queued", "undelivered", "delivered"):
            answer = await twilio_post(api, attempt.id, status_params("SM1", status))
            assert answer.status_code == 200
        assert await states(db_session, notification, attempt) == ("delivered", "delivered")

    async def test_undelivered_on_the_last_channel_fails_with_the_reason(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        params = status_params("SM1", "undelivered", ErrorCode="30003")
        assert (await twilio_post(api, attempt.id, params)).status_code == 200
        assert await states(db_session, notification, attempt) == ("failed", "failed")
        assert attempt.error_code == "30003"
        assert notification.failure_reason is not None and "sms" in notification.failure_reason

    async def test_failure_with_a_channel_left_falls_back(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(
            db_session, provider_message_id="SM1", chain=["sms", "whatsapp"]
        )
        assert (await twilio_post(api, attempt.id, status_params("SM1", "failed"))).is_success
        await db_session.refresh(notification)
        assert (notification.state, notification.channel_index) == ("scheduled", 1)

    async def test_unknown_attempt_or_other_message_is_404(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        _, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        assert (await twilio_post(api, 987654321, status_params("SM1", "sent"))).status_code == 404
        other = await twilio_post(api, attempt.id, status_params("SM-other", "delivered"))
        assert other.status_code == 404

    async def test_unknown_status_is_accepted_and_ignored(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session, provider_message_id="SM1")
        answer = await twilio_post(api, attempt.id, status_params("SM1", "teleported"))
        assert answer.status_code == 200 and answer.json()["changed"] is False
        assert await states(db_session, notification, attempt) == ("sent", "sent")


class TestTwilioInbound:
    async def test_signed_inbound_is_acknowledged(self, api: httpx.AsyncClient) -> None:
        params = {"MessageSid": "SM9", "From": "+8801711000003", "Body": "hello"}
        path = "/callbacks/twilio/inbound"
        signed = twilio_signature.sign(TOKEN, BASE + path, params)
        answer = await api.post(path, data=params, headers={"X-Twilio-Signature": signed})
        assert answer.status_code == 200 and "<Response/>" in answer.text
        assert (await api.post(path, data=params)).status_code == 403


class TestOneBadReportInABatch:
    """Regression (issue 11, item 6): a signed status with a 60-character ErrorCode made
    its 39 batch-mates answer 500 too."""

    async def test_fails_alone_and_its_over_long_error_code_is_cut_and_kept_whole(
        self, api: httpx.AsyncClient, api_app: FastAPI, db_session: AsyncSession
    ) -> None:
        attempts = [
            (await sent_attempt(db_session, provider_message_id=f"SM{i}"))[1] for i in range(40)
        ]
        long_code = "3" * 60
        # One batch of all 40, for sure: it closes when the 40th arrives.
        batcher = ReportBatcher(lambda: api_app.state.sessionmaker, max_batch=40, max_wait=5)
        original, api_app.state.report_batcher = api_app.state.report_batcher, batcher
        batcher.start()
        try:
            answers = await asyncio.gather(
                *(
                    twilio_post(
                        api,
                        attempt.id,
                        status_params(f"SM{i}", "undelivered", ErrorCode=long_code)
                        if i == 7
                        else status_params(f"SM{i}", "delivered"),
                    )
                    for i, attempt in enumerate(attempts)
                )
            )
        finally:
            await batcher.stop()
            api_app.state.report_batcher = original
        assert [answer.status_code for answer in answers] == [200] * 40
        for i, attempt in enumerate(attempts):
            await db_session.refresh(attempt)
            assert attempt.status == ("failed" if i == 7 else "delivered")
        assert attempts[7].error_code == long_code[:50]
        kept = await db_session.scalar(
            select(DeliveryReport.error_code).where(DeliveryReport.attempt_id == attempts[7].id)
        )
        assert kept == long_code

    async def test_a_message_id_longer_than_any_stored_is_a_400(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_attempt(db_session)
        answer = await twilio_post(api, attempt.id, status_params("S" * 101, "delivered"))
        assert answer.status_code == 400
        assert await states(db_session, notification, attempt) == ("sent", "sent")
