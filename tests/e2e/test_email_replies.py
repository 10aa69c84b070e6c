"""Email end to end: the real API, worker, embedded SMTP server (`notify fake-mail`) and
`notify smtp-inbound` as processes. A staff message goes by email; the patient's replies,
by SMTP and by SendGrid's Inbound Parse, land on the conversation without the quote; a
hard-bounce DSN blocks the address; the next staff message is a 422 and a due reminder
ends `denied`; `GET /v1/email-status` reports each step."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import orjson
import pytest
import pytest_asyncio

from app.devtools.environment import notify_command
from app.embedded import free_port
from app.reply_addresses import bounce_address
from app.security import TokenSigner
from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.email import mail
from tests.stack import TEST_SECRET_KEY, Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

DOMAIN = "reply.clinic.example"
PASSWORD = "e2e-inbound-parse-password"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(services: Services) -> AsyncIterator[Stack]:
    env = {
        "EMAIL_INBOUND_DOMAIN": DOMAIN,
        "SENDGRID_INBOUND_PARSE_PASSWORD": PASSWORD,
        # Reminders here go by email alone: a blocked address leaves nothing to try.
        "CHANNEL_CHAINS": orjson.dumps(
            {"BD": ["sms"], "BD/appointment_reminder": ["email"], "*": ["sms"]}
        ).decode(),
        "DISPATCH_IDLE_SECONDS": "0.1",
    }
    async with run_stack(services, env=env) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def smtp_inbound(stack: Stack) -> AsyncIterator[int]:
    """`notify smtp-inbound` as its own process, on the stack's database."""
    port = free_port()
    log = (stack.workdir / "smtp-inbound.log").open("wb")
    process = subprocess.Popen(
        notify_command("smtp-inbound", "--host", "127.0.0.1", "--port", str(port)),
        env=stack.env,
        cwd=stack.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        try:
            await wait_until(listening, timeout=60)
        except AssertionError:
            log.flush()
            output = (stack.workdir / "smtp-inbound.log").read_text()
            raise AssertionError(f"exit {process.poll()}: {output}") from None
        yield port
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def send_smtp(port: int, to: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert smtp.sendmail("patient@mail.example.org", [to], raw) == {}


async def email_status(api: httpx.AsyncClient, address: str) -> dict[str, object]:
    answer = await api.get(f"/v1/email-status/{quote(address, safe='')}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def texts_on(api: httpx.AsyncClient, conversation_id: str) -> list[tuple[str, str]]:
    exchange = (await api.get(f"/v1/conversations/{conversation_id}")).json()
    return [(m["direction"], m["text"]) for m in exchange["messages"]]


async def test_replies_bounce_block_and_refusal(
    stack: Stack, stack_api: httpx.AsyncClient, smtp_inbound: int
) -> None:
    address = f"rahim.{uuid.uuid4().hex[:8]}@mail.example.org"
    patient = await put_patient(stack_api, phone(3), email=address, locale="en")
    assert (await email_status(stack_api, address))["status"] == "unknown"

    # A staff message to a patient with both email and phone goes by email, with the
    # conversation's signed Reply-To.
    opened = await stack_api.post(
        "/v1/conversations", json={"patient_id": patient["id"], "subject": "Your visit"}
    )
    conversation = opened.json()["id"]
    written = await stack_api.post(
        f"/v1/conversations/{conversation}/messages",
        json={"text": "Can you come on Thursday?", "broadcast_to": ["patient"]},
    )
    assert written.status_code == 201, written.text
    sent = await notification_in(stack_api, written.json()["notification_id"], "sent")
    assert sent["channel"] == "email"
    [summary] = await stack.mail(to=address)
    headers = dict((await stack.mail_message(summary["id"]))["headers"])
    reply_to = headers["Reply-To"]
    assert reply_to.startswith("reply+") and reply_to.endswith(f"@{DOMAIN}")

    # The patient's reply by SMTP lands on the conversation without the quote.
    await asyncio.to_thread(
        send_smtp, smtp_inbound, reply_to, mail.reply(sender=address, to=reply_to, text="Yes.")
    )
    # And one by SendGrid's Inbound Parse.
    raw = mail.reply(sender=address.upper(), to=reply_to, text="See you Thursday.")
    async with httpx.AsyncClient() as client:
        posted = await client.post(
            f"{stack.api_url}/callbacks/email/inbound-parse",
            auth=("sendgrid", PASSWORD),
            data={"envelope": orjson.dumps({"to": [reply_to]}).decode()},
            files={"email": (None, raw, "text/plain")},
        )
    assert posted.json()["outcome"] == "attached", posted.text
    assert await texts_on(stack_api, conversation) == [
        ("out", "Can you come on Thursday?"),
        ("in", "Yes."),
        ("in", "See you Thursday."),
    ]

    # A hard-bounce DSN at the address's own bounce address (the channel's envelope
    # sender for it) blocks it.
    bounce_to = bounce_address(TokenSigner(TEST_SECRET_KEY), DOMAIN, address)
    await asyncio.to_thread(send_smtp, smtp_inbound, bounce_to, mail.dsn(address, to=bounce_to))
    status = await email_status(stack_api, address)
    assert status["status"] == "blocked"
    assert [h["event"] for h in status["history"]] == ["hard_bounce"]  # type: ignore[attr-defined]

    # The next staff message to it is refused at the API.
    refused = await stack_api.post(
        f"/v1/conversations/{conversation}/messages",
        json={"text": "Are you there?", "broadcast_to": ["patient"]},
    )
    assert refused.status_code == 422, refused.text
    assert "blocked" in refused.json()["error"]["message"]

    # A due reminder to it ends `denied` with the reason, never attempted.
    reminder = await schedule(stack_api, patient["id"])
    denied = await notification_in(stack_api, reminder["id"], "denied")
    assert "email address blocked" in denied["failure_reason"]
    assert len(await stack.mail(to=address)) == 1

    # Unblocked explicitly, it is mailed again.
    assert (await stack_api.delete(f"/v1/email-status/{quote(address, safe='')}")).json()[
        "status"
    ] == "unknown"
    again = await stack_api.post(
        f"/v1/conversations/{conversation}/messages",
        json={"text": "Thursday at ten.", "broadcast_to": ["patient"]},
    )
    assert again.status_code == 201, again.text
    await notification_in(stack_api, again.json()["notification_id"], "sent")


async def test_the_fake_mail_answers_and_returns_what_it_kept(
    stack: Stack, stack_api: httpx.AsyncClient, smtp_inbound: int
) -> None:
    """What `notify dev` offers (docs/email.md, "Trying it in development"): the fake
    mail's reply and bounce of a kept message, sent to `notify smtp-inbound`. The reply
    lands on the conversation; the bounce blocks the address and fails the email's
    attempt (the Message-ID it quotes), so the message goes on by SMS."""
    address = f"karim.{uuid.uuid4().hex[:8]}@mail.example.org"
    patient = await put_patient(stack_api, phone(4), email=address, locale="en")
    opened = await stack_api.post(
        "/v1/conversations", json={"patient_id": patient["id"], "subject": "Your results"}
    )
    conversation = opened.json()["id"]
    async with httpx.AsyncClient(base_url=stack.mail_url) as fake_mail:
        configured = await fake_mail.post(
            "/_fake/config", json={"inbound_smtp": f"127.0.0.1:{smtp_inbound}"}
        )
        assert configured.status_code == 200, configured.text

        written = await stack_api.post(
            f"/v1/conversations/{conversation}/messages",
            json={"text": "Your results are ready.", "broadcast_to": ["patient"]},
        )
        notification_id = written.json()["notification_id"]
        await notification_in(stack_api, notification_id, "sent")
        [kept] = await stack.mail(to=address)
        replied = await fake_mail.post(
            f"/_fake/mail/{kept['id']}/reply", json={"text": "Thank you, I will call."}
        )
        assert replied.json()["sent"] is True, replied.text
        assert await texts_on(stack_api, conversation) == [
            ("out", "Your results are ready."),
            ("in", "Thank you, I will call."),
        ]

        bounced = await fake_mail.post(f"/_fake/mail/{kept['id']}/bounce", json={})
        assert bounced.json()["sent"] is True, bounced.text
    assert (await email_status(stack_api, address))["status"] == "blocked"
    moved_on = await notification_in(stack_api, notification_id, "sent", "delivered")

    async def on_sms() -> bool:
        nonlocal moved_on
        moved_on = (await stack_api.get(f"/v1/notifications/{notification_id}")).json()
        return bool(moved_on["channel"] == "sms")

    await wait_until(on_sms, timeout=20)
    email_attempt = next(a for a in moved_on["attempts"] if a["channel"] == "email")
    assert (email_attempt["status"], email_attempt["error_code"]) == ("failed", "5.1.1")
