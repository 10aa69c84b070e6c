"""The email webhooks and /v1/email-status through the real app."""

from __future__ import annotations

import base64
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.conversations import service as conversation_service
from app.email import addresses
from app.email import status as email_status
from app.email.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER
from app.models import InboundEmail, Message
from app.security import TokenSigner
from tests.email import mail
from tests.email.attempts import raw_log, reloaded, sent_email
from tests.factories import make_patient, running_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
PASSWORD = "inbound-parse-test-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"sendgrid:{PASSWORD}".encode()).decode()}
OVERRIDES: dict[str, Any] = {
    "sendgrid_event_public_key": PUBLIC_KEY,
    "sendgrid_inbound_parse_password": PASSWORD,
    "email_inbound_max_bytes": 12 * 1024 * 1024,
}
MAX_BYTES = OVERRIDES["email_inbound_max_bytes"]
SIGNER = TokenSigner(Settings().secret_key.get_secret_value())
DOMAIN = Settings().email_inbound_domain


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_app() -> AsyncIterator[FastAPI]:
    # Built here: the database URL is known only once the session's services run.
    async with running_app(Settings(**OVERRIDES)) as app:
        yield app


def signed(body: bytes, *, key: ec.EllipticCurvePrivateKey = PRIVATE_KEY, at: int | None = None):  # type: ignore[no-untyped-def]
    timestamp = str(at if at is not None else int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: timestamp,
        "Content-Type": "application/json",
    }


def sendgrid_event(address: str, event: str, **fields: Any) -> dict[str, Any]:
    return {
        "email": address,
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": "m." + uuid.uuid4().hex,
        **fields,
    }


def fresh() -> str:
    return f"p.{uuid.uuid4().hex[:10]}@example.com"


def status_url(address: str) -> str:
    return "/v1/email-status/" + quote(address, safe="")


class TestEventWebhook:
    async def test_signed_events_set_each_addresss_status(
        self, client: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        bounced, complained, unsubscribed, delivered, soft = (fresh() for _ in range(5))
        body = orjson.dumps(
            [
                sendgrid_event(bounced, "bounce", type="bounce", status="5.1.1", reason="no user"),
                sendgrid_event(complained, "spamreport"),
                sendgrid_event(unsubscribed, "unsubscribe"),
                sendgrid_event(delivered, "delivered", response="250 OK"),
                sendgrid_event(soft, "bounce", type="blocked", status="4.7.1"),
                sendgrid_event(delivered, "open"),
                {"event": "delivered"},
            ]
        )
        answer = await client.post("/callbacks/email/events", content=body, headers=signed(body))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "status": "ok",
            "recorded": 5,
            "reports": 0,
            "ignored": 1,
            "unreadable": 1,
        }
        expected = {
            bounced: "blocked",
            complained: "blocked",
            unsubscribed: "blocked",
            delivered: "deliverable",
            soft: "unknown",
        }
        for address, status in expected.items():
            got = (await api.get(status_url(address))).json()
            assert got["status"] == status, (address, got)
        bounced_status = (await api.get(status_url(bounced))).json()
        assert "5.1.1" in bounced_status["reason"]
        assert bounced_status["history"][0]["source"] == "sendgrid"
        # The same post again (SendGrid retries): nothing new.
        again = await client.post("/callbacks/email/events", content=body, headers=signed(body))
        assert again.json()["recorded"] == 0

    async def test_a_forged_signature_is_refused(
        self, client: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        address = fresh()
        body = orjson.dumps([sendgrid_event(address, "spamreport")])
        other_key = ec.generate_private_key(ec.SECP256R1())
        tampered = body.replace(b"spamreport", b"unsubscribe")
        cases = [
            signed(body, key=other_key),
            {**signed(body), SIGNATURE_HEADER: "not base64!"},
            {**signed(body), SIGNATURE_HEADER: base64.b64encode(b"\x30\x00").decode()},
            {"Content-Type": "application/json"},
            signed(body, at=int(time.time()) - 3600),  # a replay: valid, but stale
        ]
        for headers in cases:
            answer = await client.post("/callbacks/email/events", content=body, headers=headers)
            assert answer.status_code == 403, answer.text
        answer = await client.post(
            "/callbacks/email/events", content=tampered, headers=signed(body)
        )
        assert answer.status_code == 403
        assert (await api.get(status_url(address))).json()["status"] == "unknown"

    async def test_a_signed_body_that_is_not_events_is_a_400(
        self, client: httpx.AsyncClient
    ) -> None:
        for body in (b"{}", b"not json", b'"x"'):
            answer = await client.post(
                "/callbacks/email/events", content=body, headers=signed(body)
            )
            assert answer.status_code == 400


async def post_events(client: httpx.AsyncClient, *events: dict[str, Any]) -> dict[str, Any]:
    body = orjson.dumps(list(events))
    answer = await client.post("/callbacks/email/events", content=body, headers=signed(body))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


class TestEventsOnAttempts:
    """The Event Webhook's events about one email reach its attempt, named by `smtp-id`
    (the Message-ID the channel recorded), through the provider-reports path."""

    async def test_delivered_delivers_the_attempt_and_its_notification(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        smtp_id = f"<{attempt.provider_message_id}>"
        answer = await post_events(
            client, sendgrid_event(address, "delivered", response="250 OK", **{"smtp-id": smtp_id})
        )
        assert (answer["recorded"], answer["reports"]) == (1, 1)
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("delivered", "delivered")
        assert attempt.delivered_at is not None
        assert await raw_log(db_session, attempt) == [("delivered", "delivered", True)]

    @pytest.mark.parametrize(
        ("event", "fields", "reason"),
        [
            ("bounce", {"type": "bounce", "status": "5.1.1"}, "bounced"),
            ("bounce", {"type": "blocked", "status": "4.7.1"}, "bounced"),
            ("dropped", {"reason": "Bounced Address {address}"}, "dropped by SendGrid"),
        ],
    )
    async def test_a_bounce_or_a_drop_fails_it_and_falls_back_to_the_next_channel(
        self,
        client: httpx.AsyncClient,
        db_session: AsyncSession,
        event: str,
        fields: dict[str, Any],
        reason: str,
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        fields = {
            "reason": "550 5.1.1 <{address}>: no such user",
            **{k: v.format(address=address.upper()) for k, v in fields.items()},
        }
        fields["reason"] = fields["reason"].format(address=address.upper())
        await post_events(
            client,
            sendgrid_event(
                address, event, **{"smtp-id": f"<{attempt.provider_message_id}>"}, **fields
            ),
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert attempt.status == "failed" and attempt.failed_at is not None
        # Due again at once on SMS, the next channel, with why.
        assert (notification.state, notification.channel_index) == ("scheduled", 1)
        assert notification.failure_reason is not None
        assert notification.failure_reason.startswith(f"email: {reason}")
        # The address the reason quotes is masked wherever it is kept.
        for text in (notification.failure_reason, attempt.error_message or ""):
            assert address not in text.lower() and addresses.mask(address) in text

    async def test_a_failure_with_no_channel_left_fails_the_notification(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address, chain=("email",))
        await post_events(
            client,
            sendgrid_event(
                address,
                "bounce",
                type="bounce",
                status="5.1.1",
                **{"smtp-id": f"<{attempt.provider_message_id}>"},
            ),
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("failed", "failed")
        assert attempt.error_code == "5.1.1"

    async def test_deferred_is_the_raw_log_only(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        answer = await post_events(
            client,
            sendgrid_event(
                address,
                "deferred",
                response="400 try again later",
                attempt="5",
                **{"smtp-id": f"<{attempt.provider_message_id}>"},
            ),
        )
        assert (answer["recorded"], answer["reports"], answer["ignored"]) == (0, 1, 0)
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert attempt.provider_status == "250"
        assert await raw_log(db_session, attempt) == [("sent", "deferred", False)]

    async def test_an_open_is_not_a_read_by_default(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        answer = await post_events(
            client,
            sendgrid_event(address, "open", **{"smtp-id": f"<{attempt.provider_message_id}>"}),
        )
        assert (answer["reports"], answer["ignored"]) == (0, 1)
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert await raw_log(db_session, attempt) == []

    async def test_late_reports_change_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        """docs/reliability.md G10: `delivered` and `failed` are both final; whichever
        came first stands, the other is kept in the raw log only (no fallback either)."""
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        smtp_id = {"smtp-id": f"<{attempt.provider_message_id}>"}
        await post_events(client, sendgrid_event(address, "delivered", **smtp_id))
        await post_events(
            client,
            sendgrid_event(address, "bounce", type="bounce", status="5.1.1", **smtp_id),
            sendgrid_event(address, "deferred", **smtp_id),
        )
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, attempt.error_code, attempt.failed_at) == ("delivered", None, None)
        assert (notification.state, notification.channel_index) == ("delivered", 0)
        assert [(s, applied) for s, _, applied in await raw_log(db_session, attempt)] == [
            ("delivered", True),
            ("failed", False),
            ("sent", False),
        ]

    async def test_an_email_of_no_attempt_changes_no_attempt(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        answer = await post_events(
            client,
            # Another system's email through the same account; SendGrid's own id only.
            sendgrid_event(address, "delivered", **{"smtp-id": "<other@elsewhere.example>"}),
            sendgrid_event(
                address, "bounce", type="bounce", sg_message_id=attempt.provider_message_id
            ),
        )
        assert answer["reports"] == 0
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")

    async def test_a_forged_or_stale_signature_changes_nothing(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        address = fresh()
        notification, attempt = await sent_email(db_session, address)
        body = orjson.dumps(
            [
                sendgrid_event(
                    address,
                    "bounce",
                    type="bounce",
                    status="5.1.1",
                    **{"smtp-id": f"<{attempt.provider_message_id}>"},
                )
            ]
        )
        other_key = ec.generate_private_key(ec.SECP256R1())
        for headers in (
            signed(body, key=other_key),
            signed(body, at=int(time.time()) - 3600),
            {"Content-Type": "application/json"},
        ):
            answer = await client.post("/callbacks/email/events", content=body, headers=headers)
            assert answer.status_code == 403, answer.text
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert await raw_log(db_session, attempt) == []
        page = await email_status.status(db_session, address, None, 10)
        assert (page.status, page.history) == ("unknown", [])


class TestInboundParse:
    async def conversation(self, session: AsyncSession, email: str) -> uuid.UUID:
        patient = await make_patient(session, email=email)
        conversation = await conversation_service.open_conversation(
            session, patient.id, "Your visit", None
        )
        return conversation.id

    def form(self, raw: bytes, envelope_to: list[str]) -> dict[str, Any]:
        return {
            "data": {
                "envelope": orjson.dumps({"to": envelope_to, "from": "x@example.com"}).decode(),
                "charsets": '{"to":"UTF-8"}',
                "SPF": "pass",
            },
            "files": {"email": (None, raw, "text/plain")},
        }

    async def test_a_reply_lands_on_its_conversation(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        sender = fresh()
        conversation_id = await self.conversation(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation_id)
        answer = await client.post(
            "/callbacks/email/inbound-parse",
            headers=AUTH,
            **self.form(mail.reply(sender=sender, to=to), [to]),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "ok", "outcome": "attached", "reason": None}
        text = await db_session.scalar(
            select(Message.text).where(Message.conversation_id == conversation_id)
        )
        assert text == "Yes, I will come on Tuesday."

    async def test_credentials_are_required(self, client: httpx.AsyncClient) -> None:
        raw = mail.reply()
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"sendgrid:x").decode()},
                        {"Authorization": "Bearer x"}, {"Authorization": "Basic !!!"}):  # fmt: skip
            answer = await client.post(
                "/callbacks/email/inbound-parse", headers=headers, **self.form(raw, [])
            )
            assert answer.status_code == 401

    async def test_a_post_without_the_raw_message_is_a_400(self, client: httpx.AsyncClient) -> None:
        cases: list[dict[str, Any]] = [
            {"data": {"text": "hello", "from": "a@example.com"}},
            {
                "content": b"email=x",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            {
                "content": b"--B\r\nbroken",
                "headers": {"Content-Type": "multipart/form-data; boundary=B"},
            },
        ]
        for case in cases:
            headers = {**AUTH, **case.pop("headers", {})}
            answer = await client.post("/callbacks/email/inbound-parse", headers=headers, **case)
            assert answer.status_code == 400, answer.text

    async def test_a_10_mb_message_streams_through_and_keeps_its_attachment_by_reference(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        sender = fresh()
        conversation_id = await self.conversation(db_session, sender)
        to = addresses.reply_address(SIGNER, DOMAIN, conversation_id)
        raw = mail.with_attachment(os.urandom(7_600_000), sender=sender, to=to)
        assert len(raw) > 10_000_000
        boundary = "formboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="envelope"\r\n\r\n'
            f'{{"to": ["{to}"]}}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            for start in range(0, len(raw), 64 * 1024):
                yield raw[start : start + 64 * 1024]
            yield tail

        tracemalloc.start()
        try:
            answer = await client.post(
                "/callbacks/email/inbound-parse",
                headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                content=body(),
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert answer.status_code == 200, answer.text
        # The message (10 MB, already in memory as the test's own `raw`) is never copied
        # whole: the request streams to a spooled file, the parse reads it in blocks.
        assert peak < 6_000_000, peak
        stored = await db_session.scalar(
            select(InboundEmail).where(InboundEmail.conversation_id == conversation_id)
        )
        assert stored is not None and stored.outcome == "attached"
        assert stored.attachments[0]["size"] == 7_600_000
        assert stored.size_bytes == len(raw)

    async def test_past_the_limit_is_a_413(self, client: httpx.AsyncClient) -> None:
        raw = b"x" * (MAX_BYTES + 1)
        answer = await client.post(
            "/callbacks/email/inbound-parse", headers=AUTH, **self.form(raw, [])
        )
        assert answer.status_code == 413

    async def test_malformed_mime_is_kept_unmatched_not_refused(
        self, client: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        raw = b"\x00\xff garbage \r\n\r\n" + os.urandom(2000)
        answer = await client.post(
            "/callbacks/email/inbound-parse", headers=AUTH, **self.form(raw, [f"x@{DOMAIN}"])
        )
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "unmatched"


class TestEmailStatus:
    async def test_unknown_then_blocked_then_unblocked(
        self, client: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        address = fresh()
        first = (await api.get(status_url(address.upper()))).json()
        assert first == {
            "address": address,
            "status": "unknown",
            "reason": None,
            "changed_at": None,
            "history": [],
            "next_cursor": None,
        }
        body = orjson.dumps([sendgrid_event(address, "bounce", type="bounce", status="5.1.1")])
        await client.post("/callbacks/email/events", content=body, headers=signed(body))
        assert (await api.get(status_url(address))).json()["status"] == "blocked"
        unblocked = await api.delete(status_url(address))
        assert unblocked.status_code == 200
        assert unblocked.json()["status"] == "unknown"
        assert [h["event"] for h in unblocked.json()["history"]] == ["unblocked", "hard_bounce"]

    async def test_an_address_with_a_slash_or_plus_is_one_address(
        self, api: httpx.AsyncClient
    ) -> None:
        answer = await api.get(status_url("a/b+c@example.com"))
        assert answer.status_code == 200
        assert answer.json()["address"] == "a/b+c@example.com"

    async def test_not_an_address_is_a_422(self, api: httpx.AsyncClient) -> None:
        for bad in ("nobody", "a@b", "x@example.com\r\nBcc: y@example.com"):
            answer = await api.get(status_url(bad))
            assert answer.status_code == 422, bad
            assert answer.json()["error"]["details"][0]["field"] == "address"

    async def test_needs_an_api_key(self, client: httpx.AsyncClient) -> None:
        assert (await client.get(status_url("a@example.com"))).status_code == 401
        assert (await client.delete(status_url("a@example.com"))).status_code == 401

    async def test_unmatched_inbound_emails_are_listed(
        self, client: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        raw = mail.reply(sender=fresh(), to=f"reply+forged@{DOMAIN}")
        await client.post(
            "/callbacks/email/inbound-parse",
            headers=AUTH,
            data={"envelope": "{}"},
            files={"email": (None, raw, "text/plain")},
        )
        page = (await api.get("/v1/inbound-emails")).json()
        assert page["items"][0]["reason"] == "bad_token"
        assert page["items"][0]["text"] == "Yes, I will come on Tuesday."
