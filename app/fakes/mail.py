"""The embedded SMTP server of `notify dev` (aiosmtpd): accepts every message, keeps it
in a folder (`.data/mail/`, one `.eml` file each, the newest KEEP), and shows it.

HTTP, on its own port like the other fakes:

- `GET /_fake/mail` lists the kept messages, newest first (`?to=ADDRESS` narrows);
- `GET /_fake/mail/{id}` renders one: its headers, its text and its HTML part, the HTML in
  a sandboxed frame (no script runs, nothing is fetched); `?format=json` answers the
  same as JSON, `?format=raw` the message as received (`message/rfc822`);
- `GET /_fake/stats`, `POST /_fake/reset` (forgets and deletes every message), and
  `POST /_fake/config` `{"refuse": {"ADDRESS": CODE}}` to answer RCPT TO for ADDRESS with
  CODE (a 5xx or 4xx, as a real server refusing or deferring it would), and
  `{"inbound_smtp": "HOST:PORT"}` to say where replies and bounces go (below);
- `POST /_fake/mail/{id}/reply` `{"text": "..."}`: the recipient answers a kept message,
  as a mail client would (to its Reply-To, the message quoted under "On ... wrote:"),
  and `POST /_fake/mail/{id}/bounce` `{"status": "5.1.1"}`: the recipient's server
  returns it (an RFC 3464 report to its envelope sender, quoting its headers). Both are
  sent by SMTP to the inbound server given (`--inbound-smtp HOST:PORT`, which `notify
  dev` points at its `notify smtp-inbound`): replies and bounces tried end to end.

No mail leaves the machine: nothing is relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import os
import re
import signal
import ssl
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope, Session

from app.event_loop import new_event_loop
from app.fakes.common import json_response
from app.fakes.server import start as start_http

KEEP = 1000
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_ID = re.compile(r"[0-9]{19}-[0-9]{1,9}")
_REPLY_CODE = re.compile(r"[45][0-9][0-9]")


@dataclass(slots=True)
class Summary:
    """A kept message; its headers are read when it is first listed, not on receipt (the
    header parser would cost more than the rest of the SMTP exchange)."""

    id: str
    rcpt_tos: list[str]
    size: int
    received_at: float
    _headers: dict[str, str] | None = None
    # The envelope sender (where a bounce goes); unknown for messages kept before a
    # restart.
    mail_from: str = ""

    def headers(self, folder: Path) -> dict[str, str]:
        if self._headers is None:
            try:
                with (folder / f"{self.id}.eml").open("rb") as handle:
                    parsed = BytesHeaderParser(policy=default_policy).parse(handle)
                self._headers = {
                    name: str(parsed.get(name, ""))
                    for name in ("From", "To", "Subject", "Message-ID")
                }
            except (OSError, ValueError):
                self._headers = {}
        return self._headers

    def as_json(self, folder: Path) -> dict[str, Any]:
        headers = self.headers(folder)
        return {
            "id": self.id,
            "from": headers.get("From", ""),
            "to": self.rcpt_tos or [headers.get("To", "")],
            "subject": headers.get("Subject", ""),
            "message_id": headers.get("Message-ID", "").strip("<> "),
            "size": self.size,
            "received_at": self.received_at,
        }


@dataclass
class MailStore:
    """The kept messages: files in `folder`, their summaries in memory, newest last."""

    folder: Path
    keep: int = KEEP
    messages: deque[Summary] = field(default_factory=deque)
    counts: Counter[str] = field(default_factory=Counter)
    refuse: dict[str, int] = field(default_factory=dict)
    # Where replies and bounces of kept messages are sent: (host, port), or None.
    inbound: tuple[str, int] | None = None
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.glob("*.eml"))[-self.keep :]:
            with contextlib.suppress(OSError):
                stat = path.stat()
                self.messages.append(Summary(path.stem, [], stat.st_size, stat.st_mtime))

    def add(self, data: bytes, rcpt_tos: list[str], mail_from: str = "") -> Summary:
        message_id = f"{time.time_ns():019d}-{next(self._sequence)}"
        (self.folder / f"{message_id}.eml").write_bytes(data)
        summary = Summary(message_id, rcpt_tos, len(data), time.time(), mail_from=mail_from)
        self.messages.append(summary)
        self.counts["accepted"] += 1
        while len(self.messages) > self.keep:
            old = self.messages.popleft()
            with contextlib.suppress(OSError):
                (self.folder / f"{old.id}.eml").unlink()
        return summary

    def listed(self) -> list[dict[str, Any]]:
        """Every kept message, newest first."""
        return [summary.as_json(self.folder) for summary in reversed(self.messages)]

    def summary(self, message_id: str) -> Summary | None:
        return next((m for m in self.messages if m.id == message_id), None)

    def raw(self, message_id: str) -> bytes | None:
        if not _ID.fullmatch(message_id):
            return None
        try:
            return (self.folder / f"{message_id}.eml").read_bytes()
        except OSError:
            return None

    def clear(self) -> None:
        for summary in self.messages:
            with contextlib.suppress(OSError):
                (self.folder / f"{summary.id}.eml").unlink()
        self.messages.clear()
        self.counts.clear()
        self.refuse.clear()


class AcceptEverything:
    """aiosmtpd's handler: every recipient but those configured to be refused, every
    message kept."""

    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        code = self.store.refuse.get(address.lower())
        if code is not None:
            self.store.counts[f"refused_{code}"] += 1
            kind = "mailbox unavailable" if code >= 500 else "try again later"
            return f"{code} {'5' if code >= 500 else '4'}.1.1 {kind} (fake refusal)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not data:
            data = envelope.content
        summary = self.store.add(data, list(envelope.rcpt_tos), envelope.mail_from or "")
        return f"250 OK queued as {summary.id}"


def _part(message: Message, subtype: str) -> str | None:
    if not isinstance(message, EmailMessage):
        return None
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset, a broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else None


def parsed(summary_id: str, raw: bytes) -> dict[str, Any]:
    message = message_from_bytes(raw, policy=default_policy)
    return {
        "id": summary_id,
        "headers": [[name, str(value)] for name, value in message.items()],
        "text": _part(message, "plain"),
        "html": _part(message, "html"),
    }


def render_page(view: dict[str, Any]) -> str:
    """One message as a page: every header and the text escaped, the HTML part in a
    sandboxed frame (`sandbox` without permissions: no script, no form, no navigation)."""
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in view["headers"]
    )
    parts = []
    if view["html"] is not None:
        parts.append(
            '<h2>HTML</h2><iframe sandbox="" referrerpolicy="no-referrer" '
            'style="width:100%;height:24em;border:1px solid #ccc" '
            f'srcdoc="{html.escape(view["html"], quote=True)}"></iframe>'
        )
    if view["text"] is not None:
        parts.append(f"<h2>Text</h2><pre>{html.escape(view['text'])}</pre>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Fake mail {html.escape(view['id'])}</title></head><body>"
        "<p><a href='/_fake/mail'>All messages</a> · "
        f"<a href='?format=raw'>raw</a></p><table>{rows}</table>{''.join(parts)}</body></html>"
    )


def _address(value: str) -> str:
    return parseaddr(value)[1]


def reply_to(raw: bytes, text: str) -> tuple[str, str, bytes]:
    """The recipient's answer to `raw`, as a mail client writes one -> (from, to, message):
    to the Reply-To (else the From), the new text above "On ... wrote:" and the quote."""
    message = message_from_bytes(raw, policy=default_policy)
    sender = _address(str(message.get("to", "")))
    to = _address(str(message.get("reply-to") or message.get("from") or ""))
    subject = str(message.get("subject", ""))
    original_id = str(message.get("message-id", "")).strip()
    quoted = "\r\n".join(f"> {line}" for line in (_part(message, "plain") or "").splitlines())
    body = (
        f"{text}\r\n\r\nOn {message.get('date', 'an earlier day')}, "
        f"{message.get('from', '')} wrote:\r\n{quoted}\r\n"
    )
    head = (
        f"From: {sender}\r\nTo: {to}\r\n"
        f"Subject: {subject if subject.lower().startswith('re:') else 'Re: ' + subject}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@fake-mail.localhost>\r\n"
        + (f"In-Reply-To: {original_id}\r\nReferences: {original_id}\r\n" if original_id else "")
        + 'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return sender, to, head.encode("utf-8") + body.encode("utf-8")


def bounce_of(raw: bytes, recipient: str, status: str) -> bytes:
    """A delivery status notification (RFC 3464) returning `raw`, whose `recipient` does
    not take mail (`status`, 5.x.x: permanent), quoting its headers."""
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    boundary = f"report-{uuid.uuid4().hex}"
    permanent = status.startswith("5")
    return (
        (
            "From: Mail Delivery System <MAILER-DAEMON@fake-mail.localhost>\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@fake-mail.localhost>\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f' boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            "Your message could not be delivered (fake mail).\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; fake-mail.localhost\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\n"
            f"Action: {'failed' if permanent else 'delayed'}\r\n"
            f"Status: {status}\r\n"
            f"Diagnostic-Code: smtp; {'550' if permanent else '450'} {status} "
            "mailbox unavailable (fake bounce)\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ).encode()
        + headers
        + f"\r\n\r\n--{boundary}--\r\n".encode()
    )


class FakeMail:
    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def reply(self, request: web.Request) -> web.Response:
        found = await self._kept(request)
        if isinstance(found, web.Response):
            return found
        _, raw, body = found
        text = body.get("text", "Thank you, I will come.")
        if not isinstance(text, str) or not text.strip():
            return json_response({"error": '{"text": "..."}: the reply\'s text'}, status=400)
        sender, to, message = reply_to(raw, text)
        if not sender or not to:
            return json_response({"error": "the message has no To or no Reply-To"}, status=409)
        return await self._send(sender, to, message, "reply")

    async def bounce(self, request: web.Request) -> web.Response:
        found = await self._kept(request)
        if isinstance(found, web.Response):
            return found
        summary, raw, body = found
        status = body.get("status", "5.1.1")
        if not isinstance(status, str) or not re.fullmatch(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}", status):
            return json_response({"error": '"status" is a 5.x.x or 4.x.x code'}, status=400)
        if not summary.mail_from or not summary.rcpt_tos:
            return json_response(
                {"error": "its envelope is unknown (kept before a restart): nowhere to bounce"},
                status=409,
            )
        message = bounce_of(raw, summary.rcpt_tos[0], status)
        return await self._send("", summary.mail_from, message, "bounce")

    async def _kept(
        self, request: web.Request
    ) -> web.Response | tuple[Summary, bytes, dict[str, Any]]:
        message_id = request.match_info["id"]
        summary = self.store.summary(message_id)
        raw = self.store.raw(message_id)
        if summary is None or raw is None:
            return json_response({"error": f"no message {message_id!r}"}, status=404)
        if self.store.inbound is None:
            return json_response(
                {"error": "no inbound SMTP server to send to (--inbound-smtp HOST:PORT)"},
                status=409,
            )
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return json_response({"error": "the body must be a JSON object"}, status=400)
        return summary, raw, body

    async def _send(self, sender: str, to: str, message: bytes, kind: str) -> web.Response:
        assert self.store.inbound is not None
        host, port = self.store.inbound
        try:
            # A client of its own: `aiosmtplib.send` refuses the null sender (`<>`) that
            # a bounce comes from.
            async with aiosmtplib.SMTP(hostname=host, port=port, timeout=30) as smtp:
                _, answer = await smtp.sendmail(sender, [to], message)
        except aiosmtplib.SMTPException as exc:
            self.store.counts[f"{kind}_refused"] += 1
            return json_response({"sent": False, "to": to, "answer": str(exc)}, status=502)
        except OSError as exc:
            return json_response(
                {"sent": False, "to": to, "answer": f"{type(exc).__name__}: {exc}"}, status=502
            )
        self.store.counts[f"{kind}_sent"] += 1
        return json_response({"sent": True, "to": to, "answer": answer})

    async def list_mail(self, request: web.Request) -> web.Response:
        to = request.query.get("to", "").lower()
        items = [
            item
            for item in self.store.listed()
            if not to or any(to == address.lower() for address in item["to"])
        ]
        return json_response({"items": items})

    async def show_mail(self, request: web.Request) -> web.Response:
        message_id = request.match_info["id"]
        raw = self.store.raw(message_id)
        if raw is None:
            return json_response({"error": f"no message {message_id!r}"}, status=404)
        form = request.query.get("format", "html")
        if form == "raw":
            return web.Response(body=raw, content_type="message/rfc822")
        view = parsed(message_id, raw)
        if form == "json":
            return json_response(view)
        page = render_page(view)
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    async def stats(self, request: web.Request) -> web.Response:
        return json_response({"kept": len(self.store.messages), **self.store.counts})

    async def reset(self, request: web.Request) -> web.Response:
        self.store.clear()
        return json_response({"reset": True})

    async def change_config(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return json_response({"error": "the body must be a JSON object"}, status=400)
        if not isinstance(changes, dict) or set(changes) - {"refuse", "inbound_smtp"}:
            return json_response(
                {"error": 'only {"refuse": {ADDRESS: CODE}, "inbound_smtp": "HOST:PORT"}'},
                status=400,
            )
        refuse = changes.get("refuse", self.store.refuse)
        if not isinstance(refuse, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and _REPLY_CODE.fullmatch(str(v))
            for k, v in refuse.items()
        ):
            return json_response(
                {"error": "refuse maps addresses to SMTP codes 400-599"}, status=400
            )
        inbound = self.store.inbound
        if "inbound_smtp" in changes:
            host, _, port = str(changes["inbound_smtp"] or "").rpartition(":")
            if changes["inbound_smtp"] is not None and not (host and port.isdigit()):
                return json_response({"error": "inbound_smtp is HOST:PORT, or null"}, status=400)
            inbound = (host, int(port)) if changes["inbound_smtp"] is not None else None
        self.store.refuse = {k.lower(): v for k, v in refuse.items()}
        self.store.inbound = inbound
        return json_response(
            {
                "refuse": self.store.refuse,
                "inbound_smtp": f"{inbound[0]}:{inbound[1]}" if inbound else None,
            }
        )


def http_app(store: MailStore) -> web.Application:
    fake = FakeMail(store)
    app = web.Application()
    app.router.add_get("/_fake/mail", fake.list_mail)
    app.router.add_get("/_fake/mail/{id}", fake.show_mail)
    app.router.add_post("/_fake/mail/{id}/reply", fake.reply)
    app.router.add_post("/_fake/mail/{id}/bounce", fake.bounce)
    app.router.add_get("/_fake/stats", fake.stats)
    app.router.add_post("/_fake/reset", fake.reset)
    app.router.add_post("/_fake/config", fake.change_config)
    return app


@dataclass
class RunningMail:
    store: MailStore
    smtp_port: int
    http_port: int
    _smtp: asyncio.AbstractServer
    _http: web.AppRunner

    async def stop(self) -> None:
        self._smtp.close()
        # Clients that keep a connection open must not hold the stop up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._smtp.wait_closed(), 2.0)
        await self._http.cleanup()


async def start(
    folder: Path,
    *,
    host: str = "127.0.0.1",
    smtp_port: int = 0,
    http_port: int = 0,
    keep: int = KEEP,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    inbound: tuple[str, int] | None = None,
) -> RunningMail:
    """Listen for SMTP and HTTP on `host` (0: free ports) in this event loop. With
    `starttls`, SMTP requires STARTTLS before MAIL; with `implicit_tls`, SMTP is TLS from
    the first byte (the tests of the channel's security modes)."""
    store = MailStore(folder, keep=keep, inbound=inbound)
    handler = AcceptEverything(store)
    loop = asyncio.get_running_loop()

    def connection() -> SMTPProtocol:
        store.counts["connections"] += 1
        return SMTPProtocol(
            handler,
            hostname="fake-mail.localhost",
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
            ident="clinic-notify fake mail",
            tls_context=starttls,
            require_starttls=starttls is not None,
        )

    smtp = await loop.create_server(connection, host, smtp_port, backlog=1024, ssl=implicit_tls)
    bound_smtp: int = smtp.sockets[0].getsockname()[1]
    runner, bound_http = await start_http(http_app(store), host, http_port)
    return RunningMail(store, bound_smtp, bound_http, smtp, runner)


def serve(
    folder: Path,
    host: str,
    smtp_port: int,
    http_port: int,
    keep: int,
    inbound: tuple[str, int] | None = None,
) -> None:
    """`notify fake-mail`: serve until SIGINT or SIGTERM."""

    async def main() -> None:
        running = await start(
            folder, host=host, smtp_port=smtp_port, http_port=http_port, keep=keep, inbound=inbound
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        print(
            f"Fake mail listening on smtp://{host}:{running.smtp_port} and "
            f"http://{host}:{running.http_port}/_fake/mail (kept in {os.fspath(folder)})",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await running.stop()

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(main())
