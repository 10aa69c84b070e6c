"""Reading inbound email: the reply without its quote, any charset, the malformed, the huge."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc

from app.email.mime import MAX_KEPT_PART_BYTES, skim
from app.email.parsing import html_text, latest_reply, parse
from tests.email import mail


def read(raw: bytes):  # type: ignore[no-untyped-def]
    return parse(io.BytesIO(raw), ["en"])


class TestReply:
    def test_the_quote_and_the_signature_are_stripped(self) -> None:
        email = read(mail.reply(sender="Rahim@Example.COM"))
        assert email.text == "Yes, I will come on Tuesday."
        assert email.senders == ["rahim@example.com"]
        assert email.subject == "Re: Your visit"
        assert not email.defects

    def test_a_quote_without_a_header_line_is_stripped(self) -> None:
        assert latest_reply("Fine.\n\n> earlier text\n> more", ["en"]) == "Fine."

    def test_an_html_only_reply_is_read_without_its_quote(self) -> None:
        html = (
            "<div>Yes &amp; thanks<br>Rahim</div>"
            '<div class="gmail_quote"><div>On Friday the clinic wrote:</div>'
            "<blockquote>Your visit</blockquote></div><script>x()</script>"
        )
        assert html_text(html) == "Yes & thanks\nRahim"

    def test_the_message_id_identifies_retries(self) -> None:
        first = read(mail.reply(message_id="<same@example.com>"))
        again = read(mail.reply(message_id="<same@example.com>", text="other"))
        assert first.dedup_key == again.dedup_key
        assert read(mail.reply()).dedup_key != first.dedup_key

    def test_an_out_of_office_answer_is_automatic(self) -> None:
        email = read(mail.reply(extra_headers="Auto-Submitted: auto-replied\r\n"))
        assert email.auto_reply
        assert not read(mail.reply(extra_headers="Auto-Submitted: no\r\n")).auto_reply


class TestCharsets:
    def test_a_declared_legacy_charset_is_decoded(self) -> None:
        email = read(mail.reply(text="Oui, à mardi. Ça va.", charset="iso-8859-1"))
        assert email.text == "Oui, à mardi. Ça va."

    def test_cyrillic_in_koi8_r(self) -> None:
        assert read(mail.reply(text="Да, приду.", charset="koi8-r")).text == "Да, приду."

    def test_undeclared_utf8_in_a_us_ascii_message_is_read_as_utf8(self) -> None:
        raw = mail.reply(text="হ্যাঁ, আসব।").replace(b"charset=utf-8", b"charset=us-ascii")
        assert read(raw).text == "হ্যাঁ, আসব।"

    def test_an_unknown_charset_and_invalid_bytes_are_replaced_not_refused(self) -> None:
        raw = mail.reply(text="ok").replace(b"charset=utf-8", b"charset=x-no-such-charset")
        raw = raw.replace(b"ok", b"ok \xff\xfe\x00 done")
        email = read(raw)
        assert email.text.startswith("ok ")
        assert "\x00" not in email.text
        assert email.text.endswith("done")

    def test_raw_8bit_bytes_in_a_header_are_storable(self) -> None:
        raw = mail.reply(subject="Re: \xe9t\xe9".encode("latin-1").decode("latin-1"))
        raw = raw.replace("Re: été".encode(), b"Re: \xe9t\xe9 \xff")
        email = read(raw)
        assert email.subject.startswith("Re: ")
        email.subject.encode("utf-8")  # no lone surrogate left


class TestHeaderInjection:
    def test_an_encoded_line_break_in_the_subject_stays_one_line(self) -> None:
        email = read(mail.reply(subject="=?utf-8?q?Re:_Hi=0D=0ABcc:_evil@attacker.example?="))
        assert "\r" not in email.subject and "\n" not in email.subject
        assert email.subject == "Re: Hi Bcc: evil@attacker.example"
        assert "evil@attacker.example" not in email.recipients

    def test_a_line_break_in_the_sender_name_is_no_sender(self) -> None:
        raw = mail.reply().replace(
            b"From: Rahim Uddin <rahim@example.com>",
            b"From: =?utf-8?q?Rahim=0D=0AReply-To:_x@attacker.example?= <rahim@example.com>",
        )
        email = read(raw)
        # The standard library refuses an address part with CR or LF: no sender at all
        # (kept unmatched), never a second one.
        assert email.senders == []
        assert "unreadable_from" in email.defects

    def test_two_senders_are_both_seen(self) -> None:
        raw = mail.reply().replace(
            b"From: Rahim Uddin <rahim@example.com>",
            b"From: rahim@example.com, other@attacker.example",
        )
        assert read(raw).senders == ["rahim@example.com", "other@attacker.example"]


class TestMalformed:
    def test_garbage_is_read_without_raising(self) -> None:
        for raw in (
            b"",
            b"\x00\xff" * 500,
            b"Content-Type: multipart/mixed\r\n\r\nno boundary",
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nno blank line',
            b"From: <<<>>>@@\r\nSubject: =?x?q?broken\r\n\r\nbody",
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
            b'Content-Type: multipart/mixed; boundary="C"\r\n\r\n--C\r\n\r\ninner\r\n--B--\r\n',
        ):
            email = read(raw)
            assert email.senders == [] or email.senders
            email.text.encode("utf-8")

    def test_an_unclosed_multipart_is_named_as_a_defect(self) -> None:
        raw = mail.with_attachment(b"x" * 100, sender="a@example.com", to="b@example.com")
        email = read(raw.replace(b"--XX--\r\n", b""))
        assert "unclosed_multipart" in email.defects
        assert email.text == "See the scan."

    def test_deep_nesting_stops(self) -> None:
        head = b"".join(
            f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
            for i in range(50)
        )
        email = read(head + b"Content-Type: text/plain\r\n\r\ndeep\r\n")
        assert "too_deeply_nested" in email.defects


class TestAttachments:
    def test_kept_by_reference_name_type_size_and_hash(self) -> None:
        payload = os.urandom(300_000)
        email = read(mail.with_attachment(payload, sender="a@example.com", to="b@example.com"))
        [attachment] = email.attachments
        assert attachment.filename == "scan.pdf"
        assert attachment.content_type == "application/pdf"
        assert attachment.size == len(payload)
        assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
        assert email.text == "See the scan."

    def test_a_long_text_part_is_cut_not_held(self) -> None:
        raw = mail.reply(text="word " * 400_000)
        skimmed = skim(io.BytesIO(raw))
        assert skimmed.truncated
        assert len(skimmed.skeleton) < MAX_KEPT_PART_BYTES + 4096

    def test_a_10_mb_message_is_never_held_whole(self) -> None:
        payload = os.urandom(7_500_000)
        raw = mail.with_attachment(payload, sender="a@example.com", to="b@example.com")
        assert len(raw) > 10_000_000
        source = io.BytesIO(raw)
        del raw
        tracemalloc.start()
        try:
            email = parse(source, ["en"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The standard library's parser alone peaks at 2.7 times the message.
        assert peak < 3_000_000, peak
        assert email.attachments[0].sha256 == hashlib.sha256(payload).hexdigest()


class TestDeliveryStatus:
    def test_a_permanent_failure_is_read(self) -> None:
        email = read(mail.dsn("Gone@Example.org", to="bounce+abc@reply.localhost"))
        assert email.dsn is not None
        [recipient] = email.dsn
        assert recipient.address == "gone@example.org"
        assert recipient.hard_failure
        assert recipient.status == "5.1.1"
        assert "mailbox unavailable" in recipient.diagnostic

    def test_a_delay_is_not_a_hard_failure(self) -> None:
        email = read(mail.dsn("a@example.org", to="x@y.example", action="delayed", status="4.4.1"))
        assert email.dsn is not None
        assert not email.dsn[0].hard_failure

    def test_other_mail_is_no_report(self) -> None:
        assert read(mail.reply()).dsn is None
