"""Email over SMTP (aiosmtplib): a pool of open connections, one MIME message per send.

Each message is `multipart/alternative`: the plain text as rendered, and an HTML part
built from the same text with every character escaped (a patient's name or a staff
member's words can never become markup), in the recipient's locale (`lang`, and `dir`
for right-to-left scripts). The subject is the template's title. We generate the
`Message-ID` and return it, without its angle brackets, as the provider's message id:
bounces and replies name it.

Header injection is impossible by construction: every value that reaches a header
(subject, names, the hook's headers) has its line breaks and other control characters
replaced by spaces before the `email` package folds it.

Errors map as the other adapters' do: a 5xx reply is permanent (this address will not
take this message; the next channel may), a 4xx reply and every connection failure or
time-out are transient. A failure after the message's data went out, before the server
answered, may have delivered it: `maybe_sent`, never resent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, getaddresses

import aiosmtplib
from jinja2 import Environment

from app.channels.base import (
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    SendResult,
    TransientChannelError,
)
from app.logs import mask_email

log = logging.getLogger(__name__)

# Headers that the hook may not set: they are the message's own.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-language",
        "sender",
    }
)
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'
# Every control character (and the Unicode line and paragraph separators): a header
# value is one line, whatever a name or a subject held.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Languages written right to left: their HTML part is `dir="rtl"`.
RTL_LANGUAGES = frozenset({"ar", "dv", "fa", "he", "ks", "ps", "sd", "ug", "ur", "yi"})
# The SMTP reply codes whose failure the address's owner must fix: the address is
# unknown or its mailbox cannot take mail. Another channel may still reach the patient.
MAILBOX_CODES = frozenset({550, 551, 553})

# Headers an email of a conversation carries besides its own (Reply-To with the
# conversation's token): app/channels/email_headers.py.
HeadersHook = Callable[[OutgoingMessage], Mapping[str, str]]

_HTML = Environment(autoescape=True, keep_trailing_newline=True).from_string(
    """<!DOCTYPE html>
<html lang="{{ lang }}" dir="{{ direction }}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">\
<title>{{ subject }}</title></head>
<body style="font-family: sans-serif; font-size: 16px; line-height: 1.5; color: #222">
{% for paragraph in paragraphs %}<p>{% for line in paragraph %}{{ line }}\
{% if not loop.last %}<br>
{% endif %}{% endfor %}</p>
{% endfor %}</body>
</html>
"""
)


def one_line(value: str) -> str:
    """`value` fit for a header: control characters and line breaks become one space."""
    return _CONTROL.sub(" ", value).strip()


def html_part(text: str, subject: str, locale: str) -> str:
    """The HTML alternative of `text`: paragraphs at blank lines, `<br>` at line breaks,
    every character of text and subject escaped."""
    language = (locale.split("-")[0] or "en").lower()
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    paragraphs = [block.split("\n") for block in blocks if block.strip()]
    return _HTML.render(
        lang=locale,
        direction="rtl" if language in RTL_LANGUAGES else "ltr",
        subject=one_line(subject),
        paragraphs=paragraphs,
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    # `starttls`, `tls` (implicit) or `none`.
    security: str
    username: str
    password: str
    sender: str
    timeout: float = 30.0
    pool_size: int = 4
    # Messages over one connection before it is renewed; 0: no limit.
    messages_per_connection: int = 100
    # Certificates to trust instead of the system's (tests; a private relay's CA).
    tls_context: ssl.SSLContext | None = None


def sender_address(sender: str) -> tuple[str, str]:
    """EMAIL_FROM (`addr` or `Name <addr>`) -> (display name, address). Raises ValueError."""
    parsed = getaddresses([sender])
    if len(parsed) != 1 or "@" not in parsed[0][1]:
        raise ValueError(f"EMAIL_FROM is not one address: {sender!r}")
    return one_line(parsed[0][0]), parsed[0][1]


def new_message_id(sender: str) -> str:
    """A Message-ID in our sender's domain, without angle brackets."""
    domain = sender.rpartition("@")[2] or "localhost"
    return f"{uuid.uuid4().hex}@{domain}"


# RFC 5322's limit of a line is 998 characters; a header longer than this is refused.
MAX_HEADER_LENGTH = 900


def _header_value(value: str) -> str:
    """A header's unstructured text on one line: as it is when ASCII, RFC 2047 encoded
    words otherwise (folded between words, as RFC 2047 wants them under 76 characters)."""
    text = one_line(value)
    if text.isascii():
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def _address(name: str, address: str) -> str:
    return formataddr((one_line(name), address), charset="utf-8") if one_line(name) else address


def _base64_body(text: str) -> bytes:
    """Text in its canonical form (CRLF line ends, RFC 2046) as base64 lines of 76."""
    canonical = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return base64.encodebytes(canonical.encode("utf-8")).replace(b"\n", b"\r\n")


def compose(
    message: OutgoingMessage,
    *,
    sender: str,
    message_id: str,
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """The MIME message for `message` (CRLF line ends): `multipart/alternative` with the
    plain text and its escaped HTML, both UTF-8 in base64.

    Written here rather than with the `email` package's classes: measured, those cost
    10-30 ms a message on this machine (the header registry, regular expressions compiled
    per boundary), more than the whole send path may spend (`notify bench email`). Every
    header value passes through `one_line` first; non-ASCII ones are RFC 2047 encoded
    by `email.header`. tests/channels/test_email.py reads what this writes back with the
    standard library's parser.

    Raises PermanentChannelError when the message has no address (a bug upstream: the
    dispatcher sends email only to patients who have one), ValueError for a header the
    hook may not set or one too long.
    """
    if not message.email:
        raise PermanentChannelError("no email address to send to", code="no_address")
    name, address = sender_address(sender)
    subject = one_line(message.title) or "(no subject)"
    boundary = f"=_notify_{uuid.uuid4().hex}"  # `_` is not base64: never in a body
    headers = [
        ("From", _address(name, address)),
        ("To", _address(message.recipient_name, message.email)),
        ("Subject", _header_value(subject)),
        ("Date", formatdate(localtime=False, usegmt=True)),
        ("Message-ID", f"<{message_id}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    if message.locale:
        headers.append(("Content-Language", one_line(message.locale)))
    for header, value in (extra_headers or {}).items():
        if not _HEADER_NAME.fullmatch(header) or header.lower() in RESERVED_HEADERS:
            raise ValueError(f"the email header hook may not set {header!r}")
        headers.append((header, _header_value(value)))
    lines = []
    for header, value in headers:
        if len(value) > MAX_HEADER_LENGTH:
            raise ValueError(f"the {header} header is longer than {MAX_HEADER_LENGTH}")
        lines.append(f"{header}: {value}\r\n")
    head = "".join(lines).encode("ascii")
    html = html_part(message.text, subject, message.locale)
    parts = b"".join(
        b'--%s\r\nContent-Type: text/%s; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n%s"
        % (boundary.encode(), subtype, _base64_body(content))
        for subtype, content in ((b"plain", message.text), (b"html", html))
    )
    return b"%s\r\n%s--%s--\r\n" % (head, parts, boundary.encode())


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def map_error(exc: BaseException, address: str, *, data_sent: bool = False) -> Exception:
    """An aiosmtplib failure as the channel's error: 5xx permanent, 4xx transient,
    connection failures and time-outs transient; after the data went out unanswered,
    permanent with `maybe_sent`. The recipient's address is masked in every message."""

    def clean(text: str) -> str:
        return text.replace(address, mask_email(address)) if address else text

    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients
        exc = refused[0] if refused else aiosmtplib.SMTPResponseException(550, "refused")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 100:
        text = clean(_reply(exc))[:500]
        detail: dict[str, object] = {"smtp_code": exc.code, "reply": text}
        if exc.code >= 500:
            return PermanentChannelError(
                f"the SMTP server refused the message: {text}",
                code=f"smtp_{exc.code}",
                provider_status=str(exc.code),
                detail=detail,
                # A refused login or sender is ours to fix, not the patient's: Sentry.
                unexpected=isinstance(
                    exc, aiosmtplib.SMTPAuthenticationError | aiosmtplib.SMTPSenderRefused
                ),
            )
        if exc.code >= 400:
            return TransientChannelError(
                f"the SMTP server deferred the message: {text}",
                code=f"smtp_{exc.code}",
                provider_status=str(exc.code),
                detail=detail,
            )
        return PermanentChannelError(
            f"unexpected SMTP reply: {text}",
            code=f"smtp_{exc.code}",
            provider_status=str(exc.code),
            detail=detail,
            unexpected=True,
        )
    name = type(exc).__name__
    if data_sent:
        return PermanentChannelError(
            f"the SMTP connection failed after the message's data went out ({name}): "
            "it may have been delivered",
            code="smtp_unanswered",
            maybe_sent=True,
        )
    if isinstance(exc, aiosmtplib.SMTPException | OSError | TimeoutError):
        return TransientChannelError(f"SMTP connection failed: {name}", code="smtp_connection")
    return PermanentChannelError(
        f"unexpected failure sending email: {name}", code="smtp_unexpected", unexpected=True
    )


class _Connection:
    __slots__ = ("sent", "smtp")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.sent = 0


class EmailChannel:
    """Sends over up to `pool_size` SMTP connections, kept open and reused.

    `extra_headers` is called for every message: the hook for a conversation's
    `Reply-To` (app/channels/email_headers.py). Close it with `close()`.
    """

    name = ChannelName.EMAIL

    def __init__(
        self,
        config: SmtpConfig,
        *,
        extra_headers: HeadersHook | None = None,
        envelope_sender: Callable[[str], str] | None = None,
    ) -> None:
        sender_address(config.sender)  # raises ValueError for a bad EMAIL_FROM
        self.config = config
        self.base_url = f"smtp://{config.host}:{config.port}"
        self._extra_headers = extra_headers
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(config.pool_size)
        self._envelope_from = sender_address(config.sender)[1]
        # Each recipient's own bounce address (VERP, app/channels/email_headers.py), or
        # EMAIL_FROM's address for all.
        self._envelope_sender = envelope_sender

    async def _connect(self) -> _Connection:
        c = self.config
        smtp = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username or None,
            password=c.password or None,
            timeout=c.timeout,
            use_tls=c.security == "tls",
            start_tls=c.security == "starttls",
            tls_context=c.tls_context,
        )
        await smtp.connect()
        return _Connection(smtp)

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.smtp.is_connected:
                return connection
        return await self._connect()

    def _give_back(self, connection: _Connection) -> None:
        limit = self.config.messages_per_connection
        if limit and connection.sent >= limit:
            asyncio.get_running_loop().create_task(_quit(connection.smtp))
            return
        self._idle.append(connection)

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Raises TransientChannelError or PermanentChannelError."""
        message_id = new_message_id(self._envelope_from)
        try:
            headers = self._extra_headers(message) if self._extra_headers else None
            data = compose(
                message, sender=self.config.sender, message_id=message_id, extra_headers=headers
            )
        except PermanentChannelError:
            raise
        except Exception as exc:  # a bad address or hook: ours to fix, never a crash
            raise PermanentChannelError(
                f"could not build the email: {type(exc).__name__}: {exc}",
                code="email_compose",
                unexpected=True,
            ) from exc
        async with self._slots:
            await self._deliver(message.email, data)
        return SendResult(provider_message_id=message_id, provider_status="250")

    async def _deliver(self, address: str, data: bytes) -> None:
        try:
            connection = await self._take()
        except Exception as exc:
            raise map_error(exc, address) from exc
        data_sent = False
        try:
            await connection.smtp.mail(
                self._envelope_sender(address) if self._envelope_sender else self._envelope_from
            )
            await connection.smtp.rcpt(address)
            data_sent = True
            await connection.smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            # The server answered: the connection is sound once the transaction is reset.
            await self._reset(connection)
            raise map_error(exc, address) from exc
        except Exception as exc:
            await _quit(connection.smtp)
            # A failure while the data was on the wire, before the server's answer.
            raise map_error(exc, address, data_sent=data_sent) from exc
        connection.sent += 1
        self._give_back(connection)

    async def _reset(self, connection: _Connection) -> None:
        try:
            await connection.smtp.rset()
        except Exception:
            await _quit(connection.smtp)
            return
        self._idle.append(connection)

    async def close(self) -> None:
        """Close every idle connection (QUIT)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.smtp) for c in idle))


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        if smtp.is_connected:
            await smtp.quit()
        smtp.close()
