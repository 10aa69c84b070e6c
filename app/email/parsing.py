"""An inbound email read: who sent it, what it says (the new part only), what it carries.

The raw message is skimmed first (app/email/mime.py); the skeleton that leaves, small,
is parsed with the standard library's `email` package (`policy.default`). The reply is
the plain-text body (or the HTML one made text) with the quoted previous message and
the signature removed by `mail-parser-reply`. A delivery status notification (RFC 3464:
`multipart/report; report-type=delivery-status`) is read into its recipients' actions
and the Message-ID of the email it returns, when it quotes that email's headers.

Nothing here raises on a message, however malformed: what cannot be read is absent,
and named in `defects`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from html.parser import HTMLParser
from typing import IO

from mailparser_reply import EmailReplyParser

from app.email import addresses
from app.email.mime import Attachment, skim
from app.email.text import clean, decode, single_line

MAX_TEXT_CHARS = 20_000
MAX_SUBJECT_CHARS = 300
# The reply parser's patterns run over at most this much text (they can be slow on
# long input; a reply is read from its top).
_REPLY_PARSE_CHARS = 32_000
_PARSER = BytesParser(policy=policy.default)
_HEADERS = BytesHeaderParser(policy=policy.default)
# Read errors of the standard library on hostile headers.
_HEADER_ERRORS = (ValueError, IndexError, TypeError, AttributeError, LookupError)
_QUOTED_TAIL = re.compile(r"(?:\n[ \t]*>[^\n]*)+\s*\Z")


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's block of a delivery status notification."""

    address: str
    action: str
    status: str
    diagnostic: str

    @property
    def hard_failure(self) -> bool:
        """`failed` with a permanent (5.x.x) status: the address does not take mail."""
        return self.action == "failed" and self.status.startswith("5")


@dataclass(slots=True)
class ParsedEmail:
    message_id: str | None
    # The From header's addresses, normalised; more than one is not one sender.
    senders: list[str]
    recipients: list[str]
    subject: str
    text: str
    attachments: list[Attachment]
    size: int
    auto_reply: bool
    truncated: bool
    dsn: list[DsnRecipient] | None = None
    # A delivery status notification's returned email: its Message-ID (without angle
    # brackets), from the report's `text/rfc822-headers` or `message/rfc822` part.
    original_message_id: str | None = None
    defects: list[str] = field(default_factory=list)

    @property
    def dedup_key(self) -> str:
        """What identifies this message across a provider's retries: its Message-ID, or
        when it has none, its content."""
        basis = self.message_id or "\x00".join(
            [
                *self.senders,
                self.subject,
                self.text,
                *(a.sha256 for a in self.attachments),
                str(self.size),
            ]
        )
        return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()


def parse(source: IO[bytes], reply_languages: list[str]) -> ParsedEmail:
    """Read the raw message in `source` (a binary file, at its start) once."""
    skimmed = skim(source)
    message = _PARSER.parsebytes(skimmed.skeleton)
    defects = [*skimmed.defects, *(type(d).__name__ for d in message.defects)]
    senders = _addresses(message, ("from",), defects)
    body = _body_text(message, defects)
    dsn = _dsn(message, defects)
    return ParsedEmail(
        message_id=_message_id(message),
        senders=senders,
        recipients=_addresses(
            message,
            ("to", "cc", "delivered-to", "x-original-to", "envelope-to"),
            defects,
            strict=False,
        ),
        subject=single_line(_header(message, "subject", defects), MAX_SUBJECT_CHARS),
        text=clean(latest_reply(body, reply_languages), MAX_TEXT_CHARS),
        attachments=skimmed.attachments,
        size=skimmed.size,
        auto_reply=_auto_reply(message, defects),
        truncated=skimmed.truncated,
        dsn=dsn,
        original_message_id=_returned_message_id(message) if dsn is not None else None,
        defects=defects,
    )


def latest_reply(text: str, languages: list[str]) -> str:
    """The new part of a reply: without the quoted previous message, the "On ...
    wrote:" line above it, or the signature."""
    text = text.replace("\r\n", "\n")[:_REPLY_PARSE_CHARS]
    read = EmailReplyParser(languages=languages or ["en"]).read(text)
    reply = read.replies[0].body if read.replies else text
    # A quote at the end without a header line ("> ..."), which the parser keeps.
    return _QUOTED_TAIL.sub("", "\n" + reply).strip()


def _header(message: Message, name: str, defects: list[str]) -> str:
    try:
        value = message.get(name)
    except _HEADER_ERRORS:
        defects.append(f"unreadable_{name}")
        return ""
    return "" if value is None else str(value)


def _message_id(message: Message) -> str | None:
    try:
        value = message.get("message-id")
    except _HEADER_ERRORS:
        return None
    text = single_line(str(value), 998) if value is not None else ""
    return text or None


def _addresses(
    message: EmailMessage, names: tuple[str, ...], defects: list[str], *, strict: bool = True
) -> list[str]:
    """The addresses of headers `names`: normalised (strict: senders, whose address is
    compared with patients' and staff's), or only lower-cased (where the email went:
    compared with our own reply and bounce addresses, whose domain may be a
    development one such as `reply.localhost`)."""
    found: list[str] = []
    for name in names:
        try:
            headers = message.get_all(name) or []
            specs = [a.addr_spec for h in headers for a in getattr(h, "addresses", ())]
        except _HEADER_ERRORS:
            defects.append(f"unreadable_{name}")
            continue
        for spec in specs:
            if strict:
                try:
                    address = addresses.normalise(spec)
                except addresses.InvalidAddress:
                    defects.append(f"invalid_address_in_{name}")
                    continue
            else:
                address = single_line(spec, 254).lower()
            if address and address not in found:
                found.append(address)
    return found


def _auto_reply(message: Message, defects: list[str]) -> bool:
    """An out-of-office or other automatic answer (RFC 3834), not a person's reply."""
    submitted = _header(message, "auto-submitted", defects).strip().lower()
    precedence = _header(message, "precedence", defects).strip().lower()
    return (
        (bool(submitted) and submitted != "no")
        or precedence in ("auto_reply", "bulk", "junk")
        or bool(_header(message, "x-autoreply", defects))
        or bool(_header(message, "x-autorespond", defects))
    )


def _body_text(message: EmailMessage, defects: list[str]) -> str:
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except _HEADER_ERRORS:
        defects.append("unreadable_body")
        return ""
    if part is None:
        return ""
    try:
        payload = part.get_payload(decode=True)
        charset = part.get_content_charset()
    except _HEADER_ERRORS:
        defects.append("unreadable_body")
        return ""
    if not isinstance(payload, bytes):
        return ""
    text = decode(payload, charset)
    return html_text(text) if part.get_content_subtype() == "html" else text


class _HtmlText(HTMLParser):
    """HTML made text: blocks become lines; quotes (blockquote, Gmail's and
    Thunderbird's quote wrappers), scripts and styles are dropped."""

    _BLOCKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "table"})
    _SKIPPED = frozenset({"script", "style", "head", "blockquote", "title"})
    _QUOTE_CLASSES = ("gmail_quote", "moz-cite-prefix", "yahoo_quoted")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            if tag == self._skipping[0]:
                self._skipping.append(tag)
            return
        classes = " ".join(v or "" for k, v in attrs if k == "class")
        if tag in self._SKIPPED or any(c in classes for c in self._QUOTE_CLASSES):
            self._skipping.append(tag)
            return
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag == self._skipping[0]:
                self._skipping.pop()
            return
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    reader = _HtmlText()
    reader.feed(html[: MAX_TEXT_CHARS * 10])
    reader.close()
    lines = (" ".join(line.split()) for line in "".join(reader.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _dsn(message: EmailMessage, defects: list[str]) -> list[DsnRecipient] | None:
    """The recipients of a delivery status notification, or None for other mail."""
    if message.get_content_type() != "multipart/report":
        return None
    if str(message.get_param("report-type", "")).lower() != "delivery-status":
        return None
    recipients: list[DsnRecipient] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            defects.append("unreadable_delivery_status")
            continue
        # The first block is about the message; each one after it, a recipient.
        for block in blocks[1:]:
            if not isinstance(block, Message):
                continue
            recipient = _dsn_recipient(block)
            if recipient is not None:
                recipients.append(recipient)
    return recipients


def _returned_message_id(message: EmailMessage) -> str | None:
    """The Message-ID of the email a report returns: RFC 3462's third part, the email's
    headers (`text/rfc822-headers`) or the email itself (`message/rfc822`, of which the
    skim kept the headers). None when the report quotes neither, or no Message-ID."""
    for part in message.walk():
        try:
            kind = part.get_content_type()
            if kind == "text/rfc822-headers":
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    continue
                value = _HEADERS.parsebytes(payload).get("message-id")
            elif kind in ("message/rfc822", "message/global"):
                inner = part.get_payload()
                if not isinstance(inner, list) or not inner or not isinstance(inner[0], Message):
                    continue
                value = inner[0].get("message-id")
            else:
                continue
        except _HEADER_ERRORS:
            continue
        found = _bare_message_id(str(value)) if value is not None else None
        if found is not None:
            return found
    return None


_MESSAGE_ID = re.compile(r"<([^<>\s]{1,250})>")


def _bare_message_id(value: str) -> str | None:
    match = _MESSAGE_ID.search(value)
    if match is not None:
        return match.group(1)
    bare = value.strip()
    return bare if bare and len(bare) <= 250 and not any(c.isspace() for c in bare) else None


def _dsn_recipient(block: Message) -> DsnRecipient | None:
    try:
        final = str(block.get("final-recipient") or block.get("original-recipient") or "")
        action = single_line(str(block.get("action") or ""), 20).lower()
        status = single_line(str(block.get("status") or ""), 20)
        diagnostic = single_line(str(block.get("diagnostic-code") or ""), 300)
    except _HEADER_ERRORS:
        return None
    # `rfc822; rahim@example.com`
    kind, _, address = final.partition(";")
    if not address:
        address = kind
    try:
        normalised = addresses.normalise(address.strip().strip("<>"))
    except addresses.InvalidAddress:
        return None
    return DsnRecipient(normalised, action, status.split(" ")[0], diagnostic)
