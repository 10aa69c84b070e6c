"""The embedded SMTP server: what it keeps, lists and shows, and its bad inputs."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import httpx
import pytest
import pytest_asyncio

from app.email.parsing import parse
from app.fakes import mail as fake_mail

pytestmark = pytest.mark.asyncio(loop_scope="session")

RAW = (
    b"From: a@notify.test\r\nTo: b@example.org\r\nSubject: =?utf-8?b?4KaG4Kaq4Kao4Ka+4Kaw?=\r\n"
    b"Message-ID: <m1@notify.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/html; charset="utf-8"\r\n\r\n'
    b'<p onclick="x()">hi</p><script>x()</script>\r\n'
)


@pytest_asyncio.fixture(loop_scope="session")
async def running(tmp_path: Path) -> AsyncIterator[fake_mail.RunningMail]:
    server = await fake_mail.start(tmp_path / "mail", keep=3)
    try:
        yield server
    finally:
        await server.stop()


async def send(server: fake_mail.RunningMail, to: str = "b@example.org") -> None:
    await aiosmtplib.send(
        RAW, sender="a@notify.test", recipients=[to], hostname="127.0.0.1", port=server.smtp_port
    )


def http(server: fake_mail.RunningMail) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}")


class TestFakeMail:
    async def test_keeps_lists_and_shows_escaped(self, running: fake_mail.RunningMail) -> None:
        await send(running)
        async with http(running) as client:
            [item] = (await client.get("/_fake/mail")).json()["items"]
            assert item["subject"] == "আপনার"
            assert item["message_id"] == "m1@notify.test"
            assert item["to"] == ["b@example.org"]
            page = await client.get(f"/_fake/mail/{item['id']}")
            view = (await client.get(f"/_fake/mail/{item['id']}?format=json")).json()
            raw = await client.get(f"/_fake/mail/{item['id']}?format=raw")
        assert "<script>" not in page.text.split("srcdoc=")[0]
        assert 'srcdoc="&lt;p onclick=&quot;x()&quot;&gt;' in page.text
        assert view["html"].startswith('<p onclick="x()">')
        assert raw.content == RAW
        assert (running.store.folder / f"{item['id']}.eml").exists()

    async def test_keeps_only_the_newest_and_filters_by_recipient(
        self, running: fake_mail.RunningMail
    ) -> None:
        for n in range(5):
            await send(running, to=f"p{n}@example.org")
        assert len(list(running.store.folder.glob("*.eml"))) == 3
        async with http(running) as client:
            items = (await client.get("/_fake/mail", params={"to": "P4@example.org"})).json()
        assert [i["to"] for i in items["items"]] == [["p4@example.org"]]

    async def test_survives_a_restart(self, tmp_path: Path) -> None:
        first = await fake_mail.start(tmp_path / "kept")
        await send(first)
        await first.stop()
        second = await fake_mail.start(tmp_path / "kept")
        try:
            assert [i["subject"] for i in second.store.listed()] == ["আপনার"]
        finally:
            await second.stop()

    @pytest.mark.parametrize(
        "body",
        [b"not json", b"[]", b'{"refuse": {"a@b.c": 250}}', b'{"refuse": []}', b'{"other": 1}'],
    )
    async def test_bad_config_is_a_400(self, running: fake_mail.RunningMail, body: bytes) -> None:
        async with http(running) as client:
            answer = await client.post("/_fake/config", content=body)
        assert answer.status_code == 400

    async def test_unknown_or_malformed_ids_are_404(self, running: fake_mail.RunningMail) -> None:
        async with http(running) as client:
            for path in ("/_fake/mail/0000000000000000000-1", "/_fake/mail/..%2F..%2Fx"):
                assert (await client.get(path)).status_code == 404

    async def test_reset_forgets_and_deletes(self, running: fake_mail.RunningMail) -> None:
        await send(running)
        async with http(running) as client:
            assert (await client.post("/_fake/reset")).status_code == 200
            assert (await client.get("/_fake/mail")).json()["items"] == []
        assert not list(running.store.folder.glob("*.eml"))

    async def test_a_message_over_the_size_limit_is_refused(
        self, running: fake_mail.RunningMail
    ) -> None:
        big = RAW + b"x" * (fake_mail.MAX_MESSAGE_BYTES + 10)
        with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
            await aiosmtplib.send(
                big,
                sender="a@notify.test",
                recipients=["b@example.org"],
                hostname="127.0.0.1",
                port=running.smtp_port,
            )
        assert caught.value.code == 552
        assert running.store.listed() == []


SENT = (
    b"From: Clinic <clinic@notify.test>\r\nTo: Rahim <rahim@example.org>\r\n"
    b"Reply-To: reply+token@reply.localhost\r\nSubject: Your visit\r\n"
    b"Date: Fri, 04 Dec 2026 10:00:00 GMT\r\n"
    b"Message-ID: <m2@notify.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n\r\n'
    b"Can you come on Thursday?\r\n"
)


class TestRepliesAndBounces:
    """A kept message answered or returned by its recipient, sent to the inbound SMTP
    server given (here another fake mail, standing for `notify smtp-inbound`)."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def pair(
        self, tmp_path: Path
    ) -> AsyncIterator[tuple[fake_mail.RunningMail, fake_mail.RunningMail]]:
        inbound = await fake_mail.start(tmp_path / "inbound")
        outbound = await fake_mail.start(
            tmp_path / "outbound", inbound=("127.0.0.1", inbound.smtp_port)
        )
        try:
            yield outbound, inbound
        finally:
            await outbound.stop()
            await inbound.stop()

    async def sent(self, outbound: fake_mail.RunningMail) -> str:
        await aiosmtplib.send(
            SENT,
            sender="bounce+mac@reply.localhost",
            recipients=["rahim@example.org"],
            hostname="127.0.0.1",
            port=outbound.smtp_port,
        )
        [item] = outbound.store.listed()
        return str(item["id"])

    async def test_a_reply_goes_to_the_reply_to_with_the_quote(
        self, pair: tuple[fake_mail.RunningMail, fake_mail.RunningMail]
    ) -> None:
        outbound, inbound = pair
        message_id = await self.sent(outbound)
        async with http(outbound) as client:
            answer = await client.post(
                f"/_fake/mail/{message_id}/reply", json={"text": "Yes, Thursday is fine."}
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["to"] == "reply+token@reply.localhost"
        [item] = inbound.store.listed()
        assert item["to"] == ["reply+token@reply.localhost"]
        raw = inbound.store.raw(item["id"])
        assert raw is not None and b"> Can you come on Thursday?" in raw
        assert b"In-Reply-To: <m2@notify.test>" in raw
        read = parse(io.BytesIO(raw), ["en"])
        assert (read.senders, read.subject) == (["rahim@example.org"], "Re: Your visit")
        assert read.text == "Yes, Thursday is fine."

    async def test_a_bounce_goes_to_the_envelope_sender_naming_the_message(
        self, pair: tuple[fake_mail.RunningMail, fake_mail.RunningMail]
    ) -> None:
        outbound, inbound = pair
        message_id = await self.sent(outbound)
        async with http(outbound) as client:
            answer = await client.post(f"/_fake/mail/{message_id}/bounce", json={})
        assert answer.status_code == 200, answer.text
        [item] = inbound.store.listed()
        assert item["to"] == ["bounce+mac@reply.localhost"]
        raw = inbound.store.raw(item["id"])
        assert raw is not None
        read = parse(io.BytesIO(raw), ["en"])
        assert read.dsn is not None
        [recipient] = read.dsn
        assert (recipient.address, recipient.hard_failure) == ("rahim@example.org", True)
        assert read.original_message_id == "m2@notify.test"

    async def test_without_an_inbound_server_or_with_bad_input(
        self, running: fake_mail.RunningMail, tmp_path: Path
    ) -> None:
        await send(running)
        [item] = running.store.listed()
        async with http(running) as client:
            nowhere = await client.post(f"/_fake/mail/{item['id']}/reply", json={"text": "x"})
            assert nowhere.status_code == 409
            assert (await client.post("/_fake/mail/1-1/reply", json={})).status_code == 404
            configured = await client.post("/_fake/config", json={"inbound_smtp": "127.0.0.1:1"})
            assert configured.json()["inbound_smtp"] == "127.0.0.1:1"
            bad = await client.post(f"/_fake/mail/{item['id']}/bounce", json={"status": "2.0.0"})
            assert bad.status_code == 400
            # Nobody listens on port 1: the sender hears why.
            refused = await client.post(f"/_fake/mail/{item['id']}/reply", json={"text": "x"})
            assert refused.status_code == 502 and refused.json()["sent"] is False
