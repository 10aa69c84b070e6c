"""Conformance: /gateway/api/sms driven with the cht-gateway app's own requests (its
headers, gzip bodies), every case of the protocol."""

from __future__ import annotations

import gzip
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import basic_auth
from app.conversations import service as conversation_service
from app.models import Conversation, DeliveryAttempt, Gateway, Message, WebhookEvent
from tests.factories import make_patient_at, unique_mobile
from tests.gateways.conftest import APP_HEADERS, Phone, queue_message, register

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def attempt_of(session: AsyncSession, attempt_id: int) -> DeliveryAttempt:
    session.expire_all()
    attempt = await session.get(DeliveryAttempt, attempt_id)
    assert attempt is not None
    return attempt


class TestAuthentication:
    async def test_get_answers_the_apps_settings_check(self, phone: Phone) -> None:
        response = await phone.client.get("/gateway/api/sms", headers=phone.headers())
        assert response.status_code == 200
        assert response.json() == {"medic-gateway": True}

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_wrong_missing_or_malformed_credentials_are_401(
        self, phone: Phone, method: str
    ) -> None:
        for authorization in (
            basic_auth(phone.gateway.name, "wrong"),
            basic_auth("nobody", phone.secret),
            "Basic !!!",
            f"Bearer {phone.secret}",
            None,
        ):
            headers = {**APP_HEADERS}
            if authorization:
                headers["Authorization"] = authorization
            response = await phone.client.request(
                method, "/gateway/api/sms", headers=headers, content=b"{}"
            )
            assert response.status_code == 401, authorization
            assert response.json()["error"] is True
            assert response.headers["www-authenticate"].startswith("Basic")

    @pytest.mark.parametrize("name", ["gw\x00", "\x00", "g" * 5000])
    async def test_a_name_no_gateway_can_have_is_401_not_500(self, phone: Phone, name: str) -> None:
        # Found auditing issue 11: a null character in the name reached PostgreSQL.
        for encoding in ("utf-8", "latin-1"):
            credentials = b64encode(f"{name}:{phone.secret}".encode(encoding)).decode()
            response = await phone.client.get(
                "/gateway/api/sms", headers={**APP_HEADERS, "Authorization": f"Basic {credentials}"}
            )
            assert response.status_code == 401, response.text

    async def test_credentials_in_iso_8859_1_as_the_app_encodes_them(
        self, phone: Phone, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        gateway, secret = await register(db_sessionmaker, f"café-{uuid.uuid4().hex[:6]}")
        for encoding in ("latin-1", "utf-8"):
            credentials = b64encode(f"{gateway.name}:{secret}".encode(encoding)).decode()
            response = await phone.client.get(
                "/gateway/api/sms", headers={**APP_HEADERS, "Authorization": f"Basic {credentials}"}
            )
            assert response.status_code == 200, encoding


class TestOutgoing:
    async def test_empty_and_absent_lists_answer_no_messages(self, phone: Phone) -> None:
        for body in ({}, {"messages": None, "updates": None}, {"messages": [], "updates": []}):
            response = await phone.poll(body)
            assert response.status_code == 200
            assert response.json() == {"messages": []}
        response = await phone.poll({"extra": 1, "messages": [], "version": "1.0"}, compress=False)
        assert response.json() == {"messages": []}

    async def test_due_messages_are_offered_oldest_first_until_acknowledged(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        _, a1 = await queue_message(db_session, body="first")
        _, a2 = await queue_message(db_session, body="second", mobile_e164="+8801711000002")
        await db_session.commit()
        answer = (await phone.poll()).json()["messages"]
        assert answer == [
            {"id": a1.provider_message_id, "to": "+8801711000001", "content": "first"},
            {"id": a2.provider_message_id, "to": "+8801711000002", "content": "second"},
        ]
        # Offered again until the phone says UNSENT (it has it).
        assert (await phone.poll()).json()["messages"] == answer
        response = await phone.poll(
            {"updates": [{"id": a1.provider_message_id, "status": "UNSENT"}]}
        )
        assert [m["id"] for m in response.json()["messages"]] == [a2.provider_message_id]
        attempt = await attempt_of(db_session, a1.id)
        assert attempt.gateway_id == phone.gateway.id
        assert [h["state"] for h in attempt.state_history or []] == [
            "forwarded-to-gateway",
            "received-by-gateway",
        ]

    async def test_at_most_25_messages_per_poll(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        for _ in range(27):
            await queue_message(db_session)
        await db_session.commit()
        assert len((await phone.poll()).json()["messages"]) == 25

    async def test_a_phone_is_offered_its_own_countrys_messages_only(
        self,
        phone: Phone,
        db_session: AsyncSession,
    ) -> None:
        await queue_message(db_session, country="IN", mobile_e164="+919800000001")
        await db_session.commit()
        assert (await phone.poll()).json()["messages"] == []

    async def test_two_phones_are_never_offered_one_message(
        self,
        phone: Phone,
        other_phone: Phone,
        db_session: AsyncSession,
    ) -> None:
        other = other_phone
        await queue_message(db_session)
        await db_session.commit()
        assert len((await phone.poll()).json()["messages"]) == 1
        assert (await other.poll()).json()["messages"] == []


class TestUpdates:
    async def test_statuses_are_recorded_in_the_history_and_move_the_notification(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        notification, attempt = await queue_message(db_session)
        await db_session.commit()
        message_id = attempt.provider_message_id
        await phone.poll()
        updates = [
            {"id": message_id, "status": "UNSENT"},
            {"id": message_id, "status": "PENDING"},
            {"id": message_id, "status": "PENDING"},
            {"id": message_id, "status": "SENT"},
            {"id": message_id, "status": "DELIVERED"},
        ]
        response = await phone.poll({"updates": updates})
        assert response.status_code == 200
        stored = await attempt_of(db_session, attempt.id)
        assert [h["state"] for h in stored.state_history or []] == [
            "forwarded-to-gateway",
            "received-by-gateway",
            "forwarded-by-gateway",
            "sent",
            "delivered",
        ]
        assert all("at" in h for h in stored.state_history or [])
        assert stored.status == "delivered" and stored.sent_at is not None
        await db_session.refresh(notification)
        assert notification.state == "delivered"
        # The same again later records nothing new.
        await phone.poll({"updates": updates[-1:]})
        assert len((await attempt_of(db_session, attempt.id)).state_history or []) == 5

    async def test_failed_with_reason_fails_over_to_the_next_channel(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        notification, attempt = await queue_message(db_session)
        await db_session.commit()
        await phone.poll()
        update = {"id": attempt.provider_message_id, "status": "FAILED", "reason": "no credit"}
        await phone.poll({"updates": [update]})
        stored = await attempt_of(db_session, attempt.id)
        assert stored.status == "failed" and stored.error_message == "no credit"
        assert (stored.state_history or [])[-1]["reason"] == "no credit"
        await db_session.refresh(notification)
        # The chain's next channel (sms) is tried.
        assert notification.state == "scheduled" and notification.channel_index == 1

    async def test_unrecognised_statuses_and_unknown_ids_break_nothing(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        _, attempt = await queue_message(db_session)
        await db_session.commit()
        await phone.poll()
        response = await phone.poll(
            {
                "updates": [
                    {"id": "no-such-id", "status": "SENT"},
                    {"id": attempt.provider_message_id, "status": "WAITING"},
                    {"id": attempt.provider_message_id, "status": "UNSENT"},
                    {"status": "SENT"},
                    "garbage",
                    {"id": attempt.provider_message_id},
                ]
            }
        )
        assert response.status_code == 200
        history = (await attempt_of(db_session, attempt.id)).state_history or []
        # A missing status is unrecognised too (cht-core records it so).
        assert [h["state"] for h in history] == [
            "forwarded-to-gateway",
            "unrecognised",
            "received-by-gateway",
            "unrecognised",
        ]
        assert history[1]["status"] == "WAITING" and "status" not in history[3]
        attempt = await attempt_of(db_session, attempt.id)
        assert attempt.gateway_state == "received-by-gateway"

    async def test_another_phones_message_cannot_be_reported(
        self,
        phone: Phone,
        other_phone: Phone,
        db_session: AsyncSession,
    ) -> None:
        other = other_phone
        _, attempt = await queue_message(db_session)
        await db_session.commit()
        await phone.poll()
        await other.poll({"updates": [{"id": attempt.provider_message_id, "status": "SENT"}]})
        stored = await attempt_of(db_session, attempt.id)
        assert stored.status == "sent"
        assert [h["state"] for h in stored.state_history or []] == ["forwarded-to-gateway"]


class TestNullCharacters:
    """Found auditing issue 11: a null character in an id, a status or a reason a phone
    sent (PostgreSQL stores none) was a 500 for the whole poll, and for every poll after
    it: the phone sends its unacknowledged updates again."""

    async def test_in_updates_they_are_kept_replaced_or_name_no_message(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        _, attempt = await queue_message(db_session)
        await db_session.commit()
        await phone.poll()
        message_id = attempt.provider_message_id
        updates = [
            {"id": message_id + "\x00", "status": "SENT"},
            {"id": message_id, "status": "WAIT\x00ING"},
            {"id": message_id, "status": "FAILED", "reason": "no\x00credit"},
        ]
        response = await phone.poll({"updates": updates})
        assert response.status_code == 200, response.text
        stored = await attempt_of(db_session, attempt.id)
        history = stored.state_history or []
        assert [h["state"] for h in history] == ["forwarded-to-gateway", "unrecognised", "failed"]
        assert (history[1]["status"], history[2]["reason"]) == ("WAIT\ufffdING", "no\ufffdcredit")
        assert stored.status == "failed" and stored.error_message == "no\ufffdcredit"

    async def test_in_a_message_it_is_stored_replaced(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session)
        await db_session.commit()
        message_id = str(uuid.uuid4())
        sms = {"id": message_id + "\x00", "from": patient.mobile_e164, "content": "a\x00b"}
        response = await phone.poll({"messages": [sms]})
        assert response.status_code == 200, response.text
        [row] = (
            await db_session.scalars(
                select(Message).where(
                    Message.channel == "gateway", Message.patient_id == patient.id
                )
            )
        ).all()
        assert (row.provider_message_id, row.text) == (message_id + "\ufffd", "ab")


class TestIncoming:
    async def test_messages_go_to_the_two_way_path_once_and_a_bad_one_is_dropped(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session)
        await db_session.commit()
        good = {
            "id": str(uuid.uuid4()),
            "from": patient.mobile_e164,
            "content": "STOP",
            "sms_sent": 1764800000000,
            "sms_received": 1764800001000,
            "unknown_field": True,
        }
        no_sender = {"id": str(uuid.uuid4()), "content": "no sender"}
        not_a_number = {"id": str(uuid.uuid4()), "from": "MPESA", "content": "hi"}
        answers = []
        for _ in range(2):
            response = await phone.poll({"messages": [good, no_sender, not_a_number, good]})
            assert response.status_code == 200
            answers.append(response.json()["messages"])
        rows = (
            await db_session.scalars(
                select(Message).where(
                    Message.channel == "gateway", Message.patient_id == patient.id
                )
            )
        ).all()
        assert [(r.provider_message_id, r.phone_e164, r.text) for r in rows] == [
            (good["id"], patient.mobile_e164, "STOP")
        ]
        assert int(rows[0].received_at.timestamp() * 1000) == 1764800001000
        # STOP's answer goes back to the sender through the phone, once (the repeat is
        # not acted on again).
        [reply] = answers[0]
        assert reply["to"] == patient.mobile_e164 and reply["content"]
        assert answers[1] == []

    async def test_a_polls_messages_are_filed_announced_and_answered_in_their_order(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        """The batch is stored in one go, but each patient's message is acted on as
        alone: filed on the open conversation, a new topic, a keyword answered; a
        national number is read with the gateway's country; each is announced."""
        with_topic = await make_patient_at(db_session)
        newcomer = await make_patient_at(db_session)
        stopper = await make_patient_at(db_session)
        conversation = await conversation_service.open_conversation(
            db_session, with_topic.id, "Visit on Monday", None
        )
        await db_session.commit()
        unknown_national = "0" + unique_mobile()[4:]  # 017..., a Bangladeshi number

        def sms(sender: str, content: str) -> dict[str, object]:
            return {"id": str(uuid.uuid4()), "from": sender, "content": content}

        batch = [
            sms(with_topic.mobile_e164, "I will come"),
            sms(newcomer.mobile_e164, "Is the clinic open on Friday?"),
            sms(unknown_national, "who is this"),
            sms(with_topic.mobile_e164, "with my son"),
            sms(stopper.mobile_e164, "stop"),
        ]
        response = await phone.poll({"messages": batch})
        assert response.status_code == 200
        [answer] = response.json()["messages"]
        assert answer["to"] == stopper.mobile_e164 and answer["content"]
        ids = [m["id"] for m in batch]
        rows = {
            r.provider_message_id: r
            for r in await db_session.scalars(
                select(Message)
                .where(Message.channel == "gateway", Message.provider_message_id.in_(ids))
                .execution_options(populate_existing=True)
            )
        }
        assert [rows[i].id for i in ids] == sorted(rows[i].id for i in ids)
        assert rows[ids[0]].conversation_id == conversation.id
        assert rows[ids[3]].conversation_id == conversation.id
        topic = await db_session.get(Conversation, rows[ids[1]].conversation_id)
        assert topic is not None and topic.patient_id == newcomer.id
        assert rows[ids[2]].patient_id is None
        assert rows[ids[2]].phone_e164 == "+880" + unknown_national[1:]
        assert rows[ids[4]].conversation_id is None  # a keyword is filed nowhere
        await db_session.refresh(stopper)
        assert stopper.opted_out_channels
        events = {
            e.data["message_id"]: e.data
            for e in await db_session.scalars(
                select(WebhookEvent).where(WebhookEvent.type == "message.received")
            )
            if e.data["message_id"] in {r.id for r in rows.values()}
        }
        assert len(events) == 5
        assert events[rows[ids[0]].id]["conversation_id"] == str(conversation.id)
        assert events[rows[ids[2]].id]["patient_id"] is None
        assert events[rows[ids[3]].id]["text"] == "with my son"


class TestCompression:
    """cht-gateway's HTTP client (Android's) sends `Accept-Encoding: gzip` and inflates
    what comes back gzip-encoded."""

    async def test_an_answer_is_gzip_encoded_when_the_phone_accepts_gzip(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        for _ in range(3):
            await queue_message(db_session)
        await db_session.commit()
        raw = orjson.dumps({})
        response = await phone.client.post("/gateway/api/sms", content=raw, headers=phone.headers())
        assert response.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in response.headers["vary"].lower()
        assert len(response.content) > 0  # httpx inflated it
        compressed = int(response.headers["content-length"])
        assert compressed < len(response.content)
        assert len(response.json()["messages"]) == 3
        # The same answer, not compressed, to a client that does not accept gzip.
        for accept in ("identity", "gzip;q=0, identity", "br"):
            plain = await phone.client.post(
                "/gateway/api/sms",
                content=raw,
                headers=phone.headers(**{"Accept-Encoding": accept}),
            )
            assert "content-encoding" not in plain.headers, accept
            assert plain.json() == response.json()

    async def test_a_short_answer_is_left_uncompressed(self, phone: Phone) -> None:
        response = await phone.poll({})
        assert "content-encoding" not in response.headers
        assert response.json() == {"messages": []}


class TestErrors:
    @pytest.mark.parametrize(
        "raw",
        [b"not json", b"[]", b'{"messages": {}}', b'{"updates": "x"}'],
    )
    async def test_a_body_outside_the_protocol_is_400(self, phone: Phone, raw: bytes) -> None:
        response = await phone.client.post("/gateway/api/sms", content=raw, headers=phone.headers())
        assert response.status_code == 400
        body = response.json()
        assert body["error"] is True and body["message"]

    async def test_broken_gzip_is_400(self, phone: Phone) -> None:
        response = await phone.client.post(
            "/gateway/api/sms",
            content=gzip.compress(b'{"messages": []}')[:-6],
            headers=phone.headers(**{"Content-Encoding": "gzip"}),
        )
        assert response.status_code == 400 and response.json()["error"] is True

    async def test_a_zip_bomb_is_refused_after_decompression(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        # 64 MiB of spaces inflate from about 64 KiB: under the request limit compressed.
        bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}", compresslevel=9)
        response = await phone.client.post(
            "/gateway/api/sms",
            content=bomb,
            headers=phone.headers(**{"Content-Encoding": "gzip"}),
        )
        assert response.status_code == 413
        body = response.json()
        assert body["error"] is True and "once decompressed" in body["message"]

    async def test_a_body_over_the_limit_is_413_in_chts_shape_before_it_is_read(
        self, phone: Phone
    ) -> None:
        # Declared too large: refused by the size limit, before the endpoint runs.
        response = await phone.client.post(
            "/gateway/api/sms",
            content=b" " * (4 * 1024 * 1024 + 1),
            headers=phone.headers(),
        )
        assert response.status_code == 413
        body = response.json()
        assert body["error"] is True and "larger than" in body["message"]

    async def test_a_method_the_protocol_has_not_is_405_in_chts_shape(self, phone: Phone) -> None:
        response = await phone.client.put(
            "/gateway/api/sms", content=b"{}", headers=phone.headers()
        )
        assert response.status_code == 405
        assert response.json() == {"error": True, "message": "Method Not Allowed"}

    async def test_an_unknown_content_encoding_is_415(self, phone: Phone) -> None:
        response = await phone.client.post(
            "/gateway/api/sms", content=b"{}", headers=phone.headers(**{"Content-Encoding": "br"})
        )
        assert response.status_code == 415


async def test_a_poll_counts_as_the_gateways_last_poll(
    phone: Phone, api: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    await phone.poll()
    listed = (await api.get("/v1/gateways")).json()["data"]
    mine = next(g for g in listed if g["id"] == phone.gateway.id)
    assert mine["last_polled_at"] is not None


class TestPace:
    async def test_new_messages_wait_for_the_phones_pace_offered_ones_do_not(
        self, phone: Phone, db_session: AsyncSession
    ) -> None:
        await queue_message(db_session)
        await db_session.commit()
        assert len((await phone.poll()).json()["messages"]) == 1
        for _ in range(3):
            await queue_message(db_session)
        # As if at once again, however slow this machine is: no time since the last poll.
        await db_session.execute(
            update(Gateway)
            .where(Gateway.id == phone.gateway.id)
            .values(last_polled_at=datetime.now(UTC) + timedelta(minutes=5))
        )
        await db_session.commit()
        # The one already offered, and one new.
        assert len((await phone.poll()).json()["messages"]) == 2
