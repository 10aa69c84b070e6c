"""What SendGrid's events and bounce emails say of one email, applied to its attempt."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.email import reports, sendgrid
from app.states import AttemptStatus
from tests.email.attempts import raw_log, reloaded, sent_email

on_the_session_loop = pytest.mark.asyncio(loop_scope="session")


def event(address: str, name: str, smtp_id: str, **fields: object) -> dict[str, object]:
    return {
        "email": address,
        "timestamp": int(time.time()),
        "event": name,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": "m." + uuid.uuid4().hex,
        "smtp-id": smtp_id,
        **fields,
    }


class TestReading:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("<abc@clinic.example>", "abc@clinic.example"),
            ("  <abc@clinic.example> ", "abc@clinic.example"),
            ("abc@clinic.example", "abc@clinic.example"),
            ("<>", None),
            ("", None),
            (None, None),
            (12, None),
            ("<a b@c>", None),
            ("<" + "a" * 101 + ">", None),
        ],
    )
    def test_message_id_of(self, value: object, expected: str | None) -> None:
        assert sendgrid.message_id_of(value) == expected

    def test_each_event_as_a_report(self) -> None:
        names = ["delivered", "bounce", "dropped", "deferred", "open", "click", "processed"]
        body = orjson.dumps([event("a@example.com", n, "<m@x>") for n in names])
        batch = sendgrid.address_events(body)
        assert [(r.message_id, r.status) for r in batch.reports] == [
            ("m@x", AttemptStatus.DELIVERED),
            ("m@x", AttemptStatus.FAILED),
            ("m@x", AttemptStatus.FAILED),
            ("m@x", AttemptStatus.SENT),
        ]
        # The open, the click and `processed`: about nothing tracked.
        assert batch.ignored == 3
        with_opens = sendgrid.address_events(body, opens_are_reads=True)
        assert with_opens.reports[-1].status == AttemptStatus.READ
        assert with_opens.ignored == 2


@on_the_session_loop
class TestOpens:
    async def test_an_open_reads_the_email_when_opens_are_reads(
        self, db_session: AsyncSession
    ) -> None:
        address = f"o.{uuid.uuid4().hex[:8]}@example.com"
        notification, attempt = await sent_email(db_session, address)
        body = orjson.dumps([event(address, "open", f"<{attempt.provider_message_id}>")])
        batch = sendgrid.address_events(body, opens_are_reads=True)
        assert await reports.apply(db_session, batch.reports) == 1
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("read", "read")
        assert attempt.read_at is not None
        assert await raw_log(db_session, attempt) == [("read", "open", True)]


@on_the_session_loop
class TestDeferred:
    async def test_a_deferral_moves_a_sent_email_nowhere(self, db_session: AsyncSession) -> None:
        address = f"d.{uuid.uuid4().hex[:8]}@example.com"
        notification, attempt = await sent_email(db_session, address)
        body = orjson.dumps([event(address, "deferred", f"<{attempt.provider_message_id}>")])
        assert await reports.apply(db_session, sendgrid.address_events(body).reports) == 1
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
        assert await raw_log(db_session, attempt) == [("sent", "deferred", False)]

    async def test_it_confirms_an_email_whose_worker_died_before_writing_it_down(
        self, db_session: AsyncSession
    ) -> None:
        """A worker killed between SMTP's answer and its write-back leaves the attempt
        `unconfirmed`; SendGrid deferring the email proves it took it: `sent`, as any
        provider's report that it has the message would (never back, never resent)."""
        address = f"d.{uuid.uuid4().hex[:8]}@example.com"
        notification, attempt = await sent_email(db_session, address)
        attempt.status = "unconfirmed"
        await db_session.flush()
        body = orjson.dumps([event(address, "deferred", f"<{attempt.provider_message_id}>")])
        await reports.apply(db_session, sendgrid.address_events(body).reports)
        notification, attempt = await reloaded(db_session, notification, attempt)
        assert (attempt.status, notification.state) == ("sent", "sent")
