"""Raw test emails: replies, bounces (RFC 3464), and the malformed."""

from __future__ import annotations

import base64
import uuid


def reply(
    *,
    sender: str = "rahim@example.com",
    to: str = "reply+x@reply.localhost",
    text: str = "Yes, I will come on Tuesday.",
    subject: str = "Re: Your visit",
    message_id: str | None = None,
    charset: str = "utf-8",
    extra_headers: str = "",
) -> bytes:
    """A reply as a mail client writes one: the new text, a signature, the quote."""
    message_id = message_id or f"<{uuid.uuid4().hex}@example.com>"
    body = (
        f"{text}\r\n\r\nThanks,\r\nRahim\r\n\r\nSent from my iPhone\r\n\r\n"
        "On Fri, 4 Dec 2026 at 10:00, Clinic <clinic@example.org> wrote:\r\n"
        "> Your visit is on 12 December at Dhaka Medical.\r\n"
        "> Reply to this email to answer.\r\n"
    )
    return (
        f"From: Rahim Uddin <{sender}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={charset}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    ).encode() + body.encode(charset)


def with_attachment(payload: bytes, *, sender: str, to: str, text: str = "See the scan.") -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {sender}\r\nTo: {to}\r\nSubject: scan\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
            "--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{text}\r\n"
            "--XX\r\nContent-Type: application/pdf; name=scan.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\n'
        ).encode()
        + encoded
        + b"--XX--\r\n"
    )


def dsn(
    recipient: str,
    *,
    to: str,
    action: str = "failed",
    status: str = "5.1.1",
    message_id: str | None = None,
    original_message_id: str | None = None,
    returned: str = "text/rfc822-headers",
) -> bytes:
    """A delivery status notification (RFC 3464) about `recipient`, sent to `to`,
    returning the email `original_message_id` (its headers as `returned`:
    `text/rfc822-headers`, or `message/rfc822` with its body)."""
    message_id = message_id or f"<{uuid.uuid4().hex}@mx.example.net>"
    original = f"Message-ID: <{original_message_id}>\r\n" if original_message_id else ""
    body = "\r\nYour visit is on Tuesday.\r\n" if returned == "message/rfc822" else "\r\n"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n'
        "\r\n"
        "--R\r\nContent-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n"
        "--R\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} mailbox unavailable\r\n"
        "\r\n"
        f"--R\r\nContent-Type: {returned}\r\n\r\n"
        "From: clinic@clinic.example\r\n"
        f"To: {recipient}\r\n"
        "Subject: Your visit\r\n"
        f"{original}"
        f"{body}"
        "--R--\r\n"
    ).encode()
