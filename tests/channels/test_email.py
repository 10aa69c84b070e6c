"""The email adapter: composing (escaping, headers, locale), and sending over a real
socket to the embedded SMTP server (app/fakes/mail.py): connection reuse, security
modes, and every failure mapped to the channel's errors."""

from __future__ import annotations

import asyncio
import email
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import pytest
import pytest_asyncio

from app.channels.base import OutgoingMessage, PermanentChannelError, TransientChannelError
from app.channels.email import (
    EmailChannel,
    SmtpConfig,
    compose,
    html_part,
    map_error,
    one_line,
)
from app.fakes import mail as fake_mail

SENDER = "Dhaka Clinic <clinic@notify.test>"
ADDRESS = "rahim.uddin@mail.example.org"


def outgoing(**overrides: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "phone_e164": "+8801711000001",
        "email": ADDRESS,
        "text": "Dear Rahim,\nyour visit is on 12 December.\n\nDhaka Medical",
        "locale": "bn-BD",
        "title": "Your visit",
        "callback_url": "",
        "recipient_name": "Rahim Uddin",
        "reference": "n-1",
    }
    values.update(overrides)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    """The message as a receiver reads it from the wire."""
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body(mail: EmailMessage, subtype: str) -> str:
    part = mail.get_body(preferencelist=(subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


class TestCompose:
    def test_plain_text_and_html_alternatives_with_our_message_id(self) -> None:
        mail = parse(compose(outgoing(), sender=SENDER, message_id="abc@notify.test"))
        assert mail.get_content_type() == "multipart/alternative"
        assert mail["Message-ID"] == "<abc@notify.test>"
        assert mail["From"] == SENDER
        assert mail["To"] == f"Rahim Uddin <{ADDRESS}>"
        assert mail["Subject"] == "Your visit"
        assert mail["Content-Language"] == "bn-BD"
        assert mail["Date"]
        assert body(mail, "plain").replace("\r\n", "\n").startswith("Dear Rahim,\nyour visit")
        html = body(mail, "html").replace("\r\n", "\n")
        assert '<html lang="bn-BD" dir="ltr">' in html
        assert "<p>Dear Rahim,<br>\nyour visit is on 12 December.</p>" in html
        assert "<p>Dhaka Medical</p>" in html

    def test_text_and_subject_are_escaped_in_the_html(self) -> None:
        text = 'Hi <script>alert("x")</script> & <a href="http://evil">click</a>'
        mail = parse(
            compose(outgoing(text=text, title="<b>bold</b>"), sender=SENDER, message_id="a@b.c")
        )
        html = body(mail, "html")
        assert "<script>" not in html and "<a href" not in html and "<b>" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;a href=" in html
        assert "<title>&lt;b&gt;bold&lt;/b&gt;</title>" in html
        # The plain text is the text as written.
        assert "<script>" in body(mail, "plain")

    def test_right_to_left_locales_are_marked(self) -> None:
        assert 'dir="rtl"' in html_part("سلام", "s", "ar")
        assert 'dir="rtl"' in html_part("سلام", "s", "ur-PK")
        assert 'dir="ltr"' in html_part("নমস্কার", "s", "bn")

    @pytest.mark.parametrize(
        "injected",
        [
            "Hello\r\nBcc: victim@example.org",
            "Hello\nBcc: victim@example.org",
            "Hello\rBcc: victim@example.org",
            "Hello\u2028Bcc: victim@example.org",
            "Hello\x00\x0bBcc: victim@example.org",
        ],
    )
    def test_no_header_injection_through_subject_or_name(self, injected: str) -> None:
        mail = compose(
            outgoing(title=injected, recipient_name=injected),
            sender=SENDER,
            message_id="a@b.c",
        )
        raw = mail
        received = parse(mail)
        assert received["Bcc"] is None
        assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
        assert received["Subject"] == "Hello Bcc: victim@example.org"
        assert received["To"].addresses[0].addr_spec == ADDRESS
        assert len(received["To"].addresses) == 1

    def test_hook_headers_are_added_flattened_and_never_the_messages_own(self) -> None:
        composed = compose(
            outgoing(),
            sender=SENDER,
            message_id="a@b.c",
            extra_headers={
                "Reply-To": "reply+t@in.test\r\nBcc: x@y.org",
                "X-Thread": "a\nb",
            },
        )
        mail = parse(composed)
        assert mail["Reply-To"].addresses[0].addr_spec == "reply+t@in.test"
        assert mail["X-Thread"] == "a b"
        assert mail["Bcc"] is None
        assert b"\nBcc:" not in composed
        for reserved in ("To", "Subject", "Message-ID", "From"):
            with pytest.raises(ValueError, match="may not set"):
                compose(
                    outgoing(), sender=SENDER, message_id="a@b.c", extra_headers={reserved: "x"}
                )
        with pytest.raises(ValueError, match="may not set"):
            compose(outgoing(), sender=SENDER, message_id="a@b.c", extra_headers={"X\nY": "x"})

    def test_non_ascii_subject_and_names_are_encoded_and_read_back(self) -> None:
        subject = "আপনার পরবর্তী ভিজিট: ১২ ডিসেম্বর " * 4
        raw = compose(
            outgoing(title=subject, recipient_name="রহিম উদ্দিন", text="নমস্কার\nভালো থাকবেন"),
            sender="ঢাকা ক্লিনিক <clinic@notify.test>",
            message_id="a@b.c",
        )
        assert raw.isascii()
        assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
        mail = parse(raw)
        assert mail["Subject"] == subject.strip()
        assert mail["To"].addresses[0].display_name == "রহিম উদ্দিন"
        assert mail["From"].addresses[0].display_name == "ঢাকা ক্লিনিক"
        assert body(mail, "plain") == "নমস্কার\r\nভালো থাকবেন"
        assert "নমস্কার<br>" in body(mail, "html")
        assert not mail.defects and all(not part.defects for part in mail.walk())

    def test_a_header_too_long_is_refused(self) -> None:
        with pytest.raises(ValueError, match="longer than"):
            compose(
                outgoing(), sender=SENDER, message_id="a@b.c", extra_headers={"X-Long": "a" * 950}
            )

    def test_a_message_without_an_address_is_refused(self) -> None:
        with pytest.raises(PermanentChannelError) as caught:
            compose(outgoing(email=""), sender=SENDER, message_id="a@b.c")
        assert caught.value.code == "no_address"

    def test_one_line(self) -> None:
        assert one_line(" a\r\n\tb\x7fc ") == "a b c"


class TestErrorMapping:
    def test_5xx_is_permanent_with_the_address_masked(self) -> None:
        refused = aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(550, f"5.1.1 <{ADDRESS}>: no such user", ADDRESS)]
        )
        error = map_error(refused, ADDRESS)
        assert isinstance(error, PermanentChannelError)
        assert error.code == "smtp_550"
        assert error.provider_status == "550"
        assert ADDRESS not in error.message
        assert "r*********n@mail.example.org" in error.message
        assert not error.unexpected and not error.maybe_sent and not error.recipient_invalid

    @pytest.mark.parametrize("code", [421, 450, 451, 452])
    def test_4xx_is_transient(self, code: int) -> None:
        error = map_error(aiosmtplib.SMTPResponseException(code, "try later"), ADDRESS)
        assert isinstance(error, TransientChannelError)
        assert error.code == f"smtp_{code}"

    @pytest.mark.parametrize(
        "failure",
        [
            aiosmtplib.SMTPConnectError("refused"),
            aiosmtplib.SMTPServerDisconnected("gone"),
            aiosmtplib.SMTPTimeoutError("slow"),
            ConnectionResetError(),
            TimeoutError(),
        ],
    )
    def test_connection_failures_are_transient(self, failure: Exception) -> None:
        assert isinstance(map_error(failure, ADDRESS), TransientChannelError)

    def test_a_failure_after_the_data_went_out_may_have_delivered(self) -> None:
        error = map_error(aiosmtplib.SMTPServerDisconnected("gone"), ADDRESS, data_sent=True)
        assert isinstance(error, PermanentChannelError) and error.maybe_sent

    def test_a_refused_login_or_sender_is_ours_to_fix(self) -> None:
        auth = map_error(aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), ADDRESS)
        sender = map_error(aiosmtplib.SMTPSenderRefused(553, "not yours", "x@y"), ADDRESS)
        assert isinstance(auth, PermanentChannelError) and auth.unexpected
        assert isinstance(sender, PermanentChannelError) and sender.unexpected

    def test_a_reply_outside_4xx_5xx_is_unexpected(self) -> None:
        error = map_error(aiosmtplib.SMTPResponseException(250, "odd"), ADDRESS)
        assert isinstance(error, PermanentChannelError) and error.unexpected


@pytest_asyncio.fixture(loop_scope="session")
async def server(tmp_path: Path) -> AsyncIterator[fake_mail.RunningMail]:
    running = await fake_mail.start(tmp_path / "mail", keep=50)
    try:
        yield running
    finally:
        await running.stop()


def channel_for(port: int, **overrides: object) -> EmailChannel:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": "",
        "password": "",
        "sender": SENDER,
        "timeout": 5.0,
        "pool_size": 2,
    }
    values.update(overrides)
    return EmailChannel(SmtpConfig(**values))  # type: ignore[arg-type]


@pytest.mark.asyncio(loop_scope="session")
class TestSending:
    async def test_sends_and_records_our_message_id(self, server: fake_mail.RunningMail) -> None:
        channel = channel_for(server.smtp_port)
        try:
            result = await channel.send(outgoing())
        finally:
            await channel.close()
        assert result.provider_message_id.endswith("@notify.test")
        [kept] = server.store.listed()
        assert kept["message_id"] == result.provider_message_id
        assert kept["to"] == [ADDRESS]
        raw = server.store.raw(kept["id"])
        assert raw is not None and b"multipart/alternative" in raw

    async def test_connections_are_reused_up_to_the_pool_size(
        self, server: fake_mail.RunningMail
    ) -> None:
        channel = channel_for(server.smtp_port, pool_size=3)
        try:
            await asyncio.gather(*(channel.send(outgoing()) for _ in range(30)))
            await asyncio.gather(*(channel.send(outgoing()) for _ in range(30)))
        finally:
            await channel.close()
        assert len(server.store.messages) == 50  # keep=50: the oldest ten went
        assert server.store.counts["accepted"] == 60
        assert server.store.counts["connections"] == 3

    async def test_a_connection_is_renewed_after_its_message_limit(
        self, server: fake_mail.RunningMail
    ) -> None:
        channel = channel_for(server.smtp_port, pool_size=1, messages_per_connection=4)
        try:
            for _ in range(10):
                await channel.send(outgoing())
        finally:
            await channel.close()
        assert server.store.counts["connections"] == 3

    async def test_a_refused_recipient_is_permanent_and_the_connection_stays_usable(
        self, server: fake_mail.RunningMail
    ) -> None:
        server.store.refuse = {"nobody@mail.example.org": 550, "full@mail.example.org": 452}
        channel = channel_for(server.smtp_port, pool_size=1)
        try:
            with pytest.raises(PermanentChannelError) as refused:
                await channel.send(outgoing(email="nobody@mail.example.org"))
            with pytest.raises(TransientChannelError) as deferred:
                await channel.send(outgoing(email="full@mail.example.org"))
            await channel.send(outgoing())
        finally:
            await channel.close()
        assert refused.value.code == "smtp_550"
        assert "nobody@" not in refused.value.message
        assert deferred.value.code == "smtp_452"
        assert server.store.counts["connections"] == 1
        assert [m["to"] for m in server.store.listed()] == [[ADDRESS]]

    async def test_nobody_listening_is_transient(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        channel = channel_for(port)
        with pytest.raises(TransientChannelError) as caught:
            await channel.send(outgoing())
        assert caught.value.code == "smtp_connection"

    async def test_a_server_that_drops_a_reused_connection_is_reconnected(
        self, server: fake_mail.RunningMail
    ) -> None:
        channel = channel_for(server.smtp_port, pool_size=1)
        try:
            await channel.send(outgoing())
            # The server closes idle connections (a restart, an idle time-out).
            for connection in channel._idle:
                connection.smtp.close()
            await channel.send(outgoing())
        finally:
            await channel.close()
        assert server.store.counts["accepted"] == 2


def _certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


@pytest.mark.asyncio(loop_scope="session")
class TestSecurity:
    @pytest.mark.parametrize("mode", ["starttls", "tls"])
    async def test_encrypted_modes(self, tmp_path: Path, mode: str) -> None:
        key, cert = _certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=str(cert))
        running = await fake_mail.start(
            tmp_path / "mail",
            starttls=server_context if mode == "starttls" else None,
            implicit_tls=server_context if mode == "tls" else None,
        )
        channel = channel_for(running.smtp_port, security=mode, tls_context=client_context)
        try:
            await channel.send(outgoing())
        finally:
            await channel.close()
            await running.stop()
        assert running.store.counts["accepted"] == 1

    async def test_plain_connection_to_a_server_requiring_starttls_fails_permanently(
        self, tmp_path: Path
    ) -> None:
        key, cert = _certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        running = await fake_mail.start(tmp_path / "mail", starttls=server_context)
        channel = channel_for(running.smtp_port, security="none")
        try:
            with pytest.raises(PermanentChannelError) as caught:
                await channel.send(outgoing())
        finally:
            await channel.close()
            await running.stop()
        assert caught.value.code.startswith("smtp_5")
        assert running.store.counts["accepted"] == 0
