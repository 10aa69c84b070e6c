"""`notify smtp-inbound`: the SMTP server that EMAIL_INBOUND_DOMAIN's MX leads to.

It takes mail for addresses at EMAIL_INBOUND_DOMAIN only (anything else: 550 at RCPT;
it relays nothing), each message up to EMAIL_INBOUND_MAX_BYTES (552 past it), and files
it as app/email/replies.py says: 250 once it is stored (attached, unmatched or a
bounce), 451 when it could not be (the database is away: the sending server retries,
nothing is lost).

aiosmtpd's own DATA collects a message as a list of lines and then joins it (twice its
size at once); here DATA streams the lines into a spooled file (memory up to 1 MiB,
then disk), as the inbound-parse webhook does, and the message is read from there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from typing import IO, Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.email import replies
from app.email.parsing import parse
from app.email.sendgrid import SPOOL_BYTES
from app.messages import replies as patient_answers

log = logging.getLogger(__name__)


class InboundHandler:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: ArqRedis | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        # Where an answer to a consent keyword is handed to a worker; without it, the
        # workers' cron finds the answer within a minute.
        self.redis = redis

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        _, _, domain = address.rpartition("@")
        if domain.lower() != self.settings.email_inbound_domain:
            return "550 5.1.1 no such mailbox here (this server takes replies only)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_message(self, envelope: Envelope, message: IO[bytes]) -> str:
        """File one message -> the SMTP answer."""
        try:
            email = await asyncio.to_thread(parse, message, self.settings.email_reply_languages)
            async with self.sessionmaker() as session:
                received = await replies.receive(
                    session,
                    self.settings,
                    email,
                    via="smtp",
                    envelope_recipients=list(envelope.rcpt_tos),
                )
                await session.commit()
        except Exception:
            # Nothing was stored: the sender's server keeps the message and retries.
            log.exception("an inbound email could not be stored")
            return "451 4.3.0 cannot store the message now, try again later"
        log.info(
            "inbound email",
            extra={
                "inbound_email_id": received.inbound_id,
                "outcome": received.outcome,
                "reason": received.reason,
            },
        )
        if received.answer_id is not None and self.redis is not None:
            await patient_answers.hand_on(self.redis, [received.answer_id])
        return "250 OK"


class StreamingSMTP(SMTP):
    """aiosmtpd's SMTP with a DATA that streams to a file (see the module)."""

    def __init__(self, handler: InboundHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.inbound = handler

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as message:
            answer = await self._receive(message)
            if answer is None:
                message.seek(0)
                answer = await self.inbound.handle_message(self.envelope, message)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(answer)

    async def _receive(self, message: IO[bytes]) -> str | None:
        """Read DATA into `message` (dot-unstuffed) -> None, or the error answer once the
        whole of it was read (RFC 5321 4.2.5: answer after the final dot)."""
        limit = self.data_size_limit
        size = 0
        error: str | None = None
        while True:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                error = error or "500 Line too long (see RFC 5321 4.5.3.1.6)"
                await self._reader.read(exc.consumed)
                continue
            if line == b".\r\n":
                return error
            size += len(line)
            if limit and size > limit:
                error = error or "552 5.3.4 message larger than the receiver takes"
            if error is None:
                message.write(line[1:] if line.startswith(b".") else line)


async def serve(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    host: str,
    port: int,
    *,
    listening: asyncio.Future[int] | None = None,
    stop: asyncio.Event | None = None,
    redis: ArqRedis | None = None,
) -> None:
    """Run the receiver until `stop` is set; without one given, until SIGTERM or SIGINT.
    `listening` is given the port once it listens (port 0: any free one)."""
    loop = asyncio.get_running_loop()
    handler = InboundHandler(settings, sessionmaker, redis)
    server = await loop.create_server(
        lambda: StreamingSMTP(
            handler,
            data_size_limit=settings.email_inbound_max_bytes,
            enable_SMTPUTF8=True,
            hostname=settings.email_inbound_domain,
            ident="clinic-notify",
        ),
        host=host,
        port=port,
    )
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    bound = int(server.sockets[0].getsockname()[1])
    log.info("SMTP receiver listening", extra={"host": host, "port": bound})
    if listening is not None:
        listening.set_result(bound)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
