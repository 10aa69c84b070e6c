"""WhatsApp Cloud API webhooks through the real app: the verification handshake, signed
statuses (many to a webhook), and forged, unsigned and replayed ones refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import observability
from app.channels import whatsapp
from app.config import Settings
from app.models import DeliveryAttempt, Message, Notification, Patient
from tests.callbacks.test_endpoints import (
    BASE,
    TOKEN,
    sent_attempt,
    states,
    status_params,
    twilio_post,
)
from tests.factories import api_client, make_patient_at, running_app, unique_mobile

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "callback-test-app-secret"
VERIFY = "callback-test-verify-token"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def whatsapp_app() -> AsyncIterator[FastAPI]:
    settings = Settings(
        app_env="test",
        whatsapp_app_secret=SECRET,
        whatsapp_verify_token=VERIFY,
        twilio_auth_token=TOKEN,
        public_base_url=BASE,
    )
    async with running_app(settings) as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    whatsapp_app: FastAPI, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(whatsapp_app, db_sessionmaker) as c:
        yield c


def status(attempt: DeliveryAttempt, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": attempt.provider_message_id,
        "status": name,
        "timestamp": "1764870000",
        "recipient_id": "919812345675",
        "biz_opaque_callback_data": str(attempt.id),
        **extra,
    }


def webhook(*statuses: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "WABA",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {"messaging_product": "whatsapp", "statuses": list(statuses)},
                        }
                    ],
                }
            ],
        }
    )


def post(
    client: httpx.AsyncClient, body: bytes, *, secret: str = SECRET, signature: str | None = None
) -> Any:
    signed = whatsapp.signature(secret, body) if signature is None else signature
    headers = {"Content-Type": "application/json"}
    if signed:
        headers[whatsapp.SIGNATURE_HEADER] = signed
    return client.post("/callbacks/whatsapp", content=body, headers=headers)


async def whatsapp_attempt(
    session: AsyncSession, message_id: str, chain: list[str] | None = None
) -> tuple[Notification, DeliveryAttempt]:
    return await sent_attempt(
        session, "whatsapp", chain=chain or ["whatsapp", "sms"], provider_message_id=message_id
    )


class TestVerificationHandshake:
    async def test_the_right_token_gets_the_challenge_back(self, client: httpx.AsyncClient) -> None:
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY,
            "hub.challenge": "1158201444",
        }
        answer = await client.get("/callbacks/whatsapp", params=params)
        assert answer.status_code == 200
        assert answer.text == "1158201444"

    @pytest.mark.parametrize(
        "params",
        [
            {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
            {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
            {"hub.challenge": "1"},
        ],
    )
    async def test_anything_else_is_403(
        self, client: httpx.AsyncClient, params: dict[str, str]
    ) -> None:
        answer = await client.get("/callbacks/whatsapp", params=params)
        assert answer.status_code == 403
        assert "1" not in answer.text.split('"')


class TestStatuses:
    async def test_statuses_move_forward_many_to_a_webhook(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        one, first = await whatsapp_attempt(db_session, "wamid.A1")
        two, second = await whatsapp_attempt(db_session, "wamid.A2")

        answer = await post(
            client,
            webhook(
                status(first, "delivered"),
                status(first, "read"),
                status(second, "sent"),
                status(second, "delivered"),
            ),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is True
        assert await states(db_session, one, first) == ("read", "read")
        assert await states(db_session, two, second) == ("delivered", "delivered")

        # A late `delivered` after `read` changes nothing.
        late = await post(client, webhook(status(first, "delivered", timestamp="1764870099")))
        assert late.status_code == 200 and late.json()["changed"] is False
        assert await states(db_session, one, first) == ("read", "read")

    async def test_not_on_whatsapp_falls_back_and_marks_the_patient(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, "wamid.B1")
        failed = status(
            attempt, "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]
        )
        answer = await post(client, webhook(failed))
        assert answer.status_code == 200, answer.text

        await db_session.refresh(attempt)
        await db_session.refresh(notification)
        assert (attempt.status, attempt.error_code) == ("failed", "131026")
        # Due again at once, on SMS.
        assert (notification.state, notification.channel_index) == ("scheduled", 1)
        patient = await db_session.get(Patient, notification.patient_id, populate_existing=True)
        assert patient is not None and patient.whatsapp_no_account_at is not None

    async def test_a_refused_template_fails_without_fallback_and_sentry_hears_once(
        self,
        client: httpx.AsyncClient,
        db_session: AsyncSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        heard: list[str] = []
        monkeypatch.setattr(observability, "_REJECTED_TEMPLATES", set())
        monkeypatch.setattr(
            observability.sentry_sdk, "capture_message", lambda m, **_: heard.append(m)
        )
        pairs = [await whatsapp_attempt(db_session, f"wamid.C{i}") for i in range(2)]
        for _, attempt in pairs:
            failed = status(attempt, "failed", errors=[{"code": 132001, "title": "Missing"}])
            assert (await post(client, webhook(failed))).status_code == 200

        for notification, _ in pairs:
            await db_session.refresh(notification)
            assert notification.state == "failed"
            assert "template" in (notification.failure_reason or "")
            patient = await db_session.get(Patient, notification.patient_id, populate_existing=True)
            assert patient is not None and patient.whatsapp_no_account_at is None
        # The notifications' template has no WhatsApp mapping here: named by key/locale.
        assert len(heard) == 1
        assert "appointment_reminder.basic/bn-BD" in heard[0] and "132001" in heard[0]

    async def test_statuses_not_ours_or_unknown_are_skipped(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, "wamid.D1")
        theirs = {"id": "wamid.other", "status": "read", "recipient_id": "1"}
        unknown = status(attempt, "deleted")
        missing = {**status(attempt, "read"), "biz_opaque_callback_data": "999999999"}
        answer = await post(client, webhook(theirs, unknown, missing))
        assert answer.status_code == 200 and answer.json()["changed"] is False
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_a_body_that_is_not_a_webhook_is_400(self, client: httpx.AsyncClient) -> None:
        answer = await post(client, b'{"object": "page"}')
        assert answer.status_code == 400


class TestThroughTwilio:
    """WhatsApp through Twilio reports on Twilio's status callback, `read` included."""

    async def test_read_and_not_on_whatsapp(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, "SM" + "1" * 32)
        answer = await twilio_post(client, attempt.id, status_params("SM" + "1" * 32, "read"))
        assert answer.status_code == 200, answer.text
        assert await states(db_session, notification, attempt) == ("read", "read")

        notification, attempt = await whatsapp_attempt(db_session, "SM" + "2" * 32)
        failed = status_params("SM" + "2" * 32, "failed", ErrorCode="63003")
        assert (await twilio_post(client, attempt.id, failed)).status_code == 200
        await db_session.refresh(notification)
        assert (notification.state, notification.channel_index) == ("scheduled", 1)
        patient = await db_session.get(Patient, notification.patient_id, populate_existing=True)
        assert patient is not None and patient.whatsapp_no_account_at is not None


class TestRefused:
    async def test_unsigned_forged_and_replayed_are_403_and_change_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, "wamid.E1")
        body = webhook(status(attempt, "read"))

        refused = [
            await post(client, body, signature=""),  # unsigned
            await post(client, body, secret="another secret"),  # forged
            await post(client, body, signature=whatsapp.signature(SECRET, body + b" ")),
            await post(client, body, signature="sha256=" + "0" * 64),
            await post(client, body, signature=whatsapp.signature(SECRET, body).upper()),
        ]
        assert [answer.status_code for answer in refused] == [403] * 5
        assert await states(db_session, notification, attempt) == ("sent", "sent")

        # A tampered body under a genuine signature is refused too.
        tampered = body.replace(b'"read"', b'"failed"')
        signature = whatsapp.signature(SECRET, body)
        assert (await post(client, tampered, signature=signature)).status_code == 403

        accepted = await post(client, body)
        assert accepted.status_code == 200
        assert await states(db_session, notification, attempt) == ("read", "read")
        replayed = await post(client, body)
        assert replayed.status_code == 403
        assert replayed.json()["error"]["code"] == "forbidden"

    async def test_a_replay_of_a_failure_cannot_undo_a_later_state(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, "wamid.F1", chain=["whatsapp"])
        sent = webhook(status(attempt, "sent"))
        assert (await post(client, sent)).status_code == 200
        assert (await post(client, webhook(status(attempt, "read")))).status_code == 200
        assert (await post(client, sent)).status_code == 403
        assert await states(db_session, notification, attempt) == ("read", "read")


def messages_webhook(*messages: dict[str, Any]) -> bytes:
    value = {"messaging_product": "whatsapp", "contacts": [], "messages": list(messages)}
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
        }
    )


class TestInboundMessages:
    async def test_a_patients_text_and_picture_are_stored_once(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(
            db_session, unique_mobile("+9198"), country="IN", locale="hi-IN"
        )
        digits = (patient.mobile_e164 or "").removeprefix("+")
        text_id, image_id = f"wamid.{uuid.uuid4().hex}", f"wamid.{uuid.uuid4().hex}"
        body = messages_webhook(
            {
                "from": digits,
                "id": text_id,
                "timestamp": "1764870000",
                "type": "text",
                "text": {"body": "मैं मंगलवार नहीं आ सकता"},
            },
            {
                "from": digits,
                "id": image_id,
                "timestamp": "1764870060",
                "type": "image",
                "image": {"id": "MEDIA42", "mime_type": "image/jpeg", "caption": "report"},
            },
        )
        answer = await post(client, body)
        assert answer.status_code == 200, answer.text
        # Meta's retry of another body with the same messages: stored once still.
        again = await post(client, body + b" ")
        assert again.status_code == 200
        rows = (
            await db_session.scalars(
                select(Message).where(Message.patient_id == patient.id).order_by(Message.id)
            )
        ).all()
        assert [(m.provider_message_id, m.channel, m.text) for m in rows] == [
            (text_id, "whatsapp", "मैं मंगलवार नहीं आ सकता"),
            (image_id, "whatsapp", "report"),
        ]
        assert rows[1].media == [{"type": "image/jpeg", "provider_media_id": "MEDIA42"}]
        assert rows[0].received_at.timestamp() == 1764870000
        # Both on the conversation the first one opened.
        assert rows[0].conversation_id is not None
        assert rows[0].conversation_id == rows[1].conversation_id

    async def test_stop_on_whatsapp_opts_out(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session, unique_mobile("+9198"))
        digits = (patient.mobile_e164 or "").removeprefix("+")
        body = messages_webhook(
            {
                "from": digits,
                "id": f"wamid.{uuid.uuid4().hex}",
                "type": "text",
                "text": {"body": "STOP"},
            }
        )
        assert (await post(client, body)).status_code == 200
        await db_session.refresh(patient)
        assert patient.opted_out_channels == ["*"]
        # The confirmation, stored with it and left to a worker to send on WhatsApp
        # (tests/messages/test_replies.py sends it).
        [answer] = (
            await db_session.scalars(
                select(Message).where(Message.patient_id == patient.id, Message.direction == "out")
            )
        ).all()
        assert (answer.audience, answer.channel, answer.send_state) == (
            "reply",
            "whatsapp",
            "pending",
        )
        assert answer.phone_e164 == patient.mobile_e164 and answer.text

    async def test_a_forged_one_stores_nothing(self, client: httpx.AsyncClient) -> None:
        body = messages_webhook(
            {"from": "919800000001", "id": "wamid.x", "type": "text", "text": {"body": "hi"}}
        )
        assert (await post(client, body, secret="wrong")).status_code == 403

    async def test_a_message_without_a_sender_is_a_400(self, client: httpx.AsyncClient) -> None:
        body = messages_webhook({"id": "wamid.y", "type": "text", "text": {"body": "hi"}})
        assert (await post(client, body)).status_code == 400


class TestNullCharactersAndBigIds:
    """Found auditing issue 11: a null character in a patient's message or a status's
    error (PostgreSQL stores none), or an opaque id of 2**63 and up, was a 500 for the
    whole webhook, and for each of Meta's retries of it."""

    async def test_a_null_character_in_a_message_is_stored_replaced(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(
            db_session, unique_mobile("+9198"), country="IN", locale="hi-IN"
        )
        digits = (patient.mobile_e164 or "").removeprefix("+")
        message_id = f"wamid.{uuid.uuid4().hex}"
        body = messages_webhook(
            {
                "from": digits,
                "id": message_id + "\x00",
                "timestamp": "1764870000",
                "type": "image",
                "image": {"id": "M\x00", "mime_type": "image/\x00", "caption": "a\x00b"},
            }
        )
        answer = await post(client, body)
        assert answer.status_code == 200, answer.text
        [row] = (
            await db_session.scalars(select(Message).where(Message.patient_id == patient.id))
        ).all()
        assert (row.provider_message_id, row.text) == (message_id + "\ufffd", "a\ufffdb")
        assert row.media == [{"type": "image/\ufffd", "provider_media_id": "M\ufffd"}]

    async def test_a_null_character_in_a_status_s_error_the_report_stands(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        _notification, attempt = await whatsapp_attempt(db_session, "wamid.N1", chain=["whatsapp"])
        failed = status(attempt, "failed", errors=[{"code": "1\x003", "title": "t\x00"}])
        answer = await post(client, webhook(failed))
        assert answer.status_code == 200, answer.text
        await db_session.refresh(attempt)
        assert (attempt.status, attempt.error_code) == ("failed", "1\ufffd3")

    @pytest.mark.parametrize("opaque", [str(2**63), str(2**64), "9" * 40, "\u00b2", "\u0663"])
    async def test_an_opaque_id_that_cannot_be_ours_names_no_message(
        self, client: httpx.AsyncClient, db_session: AsyncSession, opaque: str
    ) -> None:
        notification, attempt = await whatsapp_attempt(db_session, f"wamid.{uuid.uuid4().hex}")
        answer = await post(
            client, webhook(status(attempt, "read", biz_opaque_callback_data=opaque))
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is False
        assert await states(db_session, notification, attempt) == ("sent", "sent")

    async def test_a_timestamp_past_year_9999_is_the_moment_we_heard(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # 12 digits were taken, and 999999999999 is in the year 33658: a 400 for the
        # whole webhook, every message of it lost.
        patient = await make_patient_at(
            db_session, unique_mobile("+9198"), country="IN", locale="hi-IN"
        )
        digits = (patient.mobile_e164 or "").removeprefix("+")
        message = {"from": digits, "id": f"wamid.{uuid.uuid4().hex}", "type": "text"}
        body = messages_webhook(
            {**message, "timestamp": "999999999999", "text": {"body": "hi"}},
            {
                **message,
                "id": f"wamid.{uuid.uuid4().hex}",
                "timestamp": "\u00b2",
                "text": {"body": "x"},
            },
        )
        answer = await post(client, body)
        assert answer.status_code == 200, answer.text
        rows = (
            await db_session.scalars(select(Message).where(Message.patient_id == patient.id))
        ).all()
        assert sorted(r.text for r in rows) == ["hi", "x"]
        assert all(r.received_at.year < 9999 for r in rows)
