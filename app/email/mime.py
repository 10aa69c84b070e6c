"""A streaming pass over a raw MIME message: its text kept, its attachments measured.

An inbound email may be 30 MB of attachments around three lines of reply. The
standard library's parser holds the whole message, and more than once while it works
(its lines, then their join, then a decoded copy: 2.7 times a 10 MB message, measured);
so the message is first read here line by line from a file, and what is written out
is a *skeleton*: every header block, and the bodies of the parts a reply is read from
(plain text, HTML, delivery-status reports), each cut at `MAX_KEPT_PART_BYTES`. Every
other part (attachments, forwarded messages) is decoded as it streams by into a size
and a SHA-256 and kept by that reference only: its bytes are never held. A delivery
report's returned email (`message/rfc822` inside `multipart/report`) keeps its header
block too, which names the email that bounced (its Message-ID); its body is measured
like an attachment's. The skeleton, small, then goes to the standard library
(`app/email/parsing.py`).

Memory is bounded by the kept text, whatever the message's size. No I/O but the reads.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import IO

from app.email.text import single_line

# The parts a reply or a bounce is read from; anything else is an attachment.
KEPT_TYPES = frozenset(
    {"text/plain", "text/html", "message/delivery-status", "text/rfc822-headers"}
)
# A delivery report's returned email: its headers are kept, its body is not.
RETURNED_TYPES = frozenset({"message/rfc822", "message/global"})
MAX_KEPT_PART_BYTES = 256 * 1024
MAX_KEPT_TOTAL_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_PARTS = 200
MAX_DEPTH = 8
_CHUNK = 64 * 1024
_BLOCK = 256 * 1024
# RFC 2046: a boundary has at most 70 characters; white space may follow it.
_MAX_DELIMITER_LINE = 1024
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_BASE64_ALPHABET)))
_HEADER_PARSER = BytesHeaderParser(policy=policy.default)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A part kept by reference: what it said it was, and what it was."""

    filename: str | None
    content_type: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(slots=True)
class Skimmed:
    skeleton: bytes
    attachments: list[Attachment]
    size: int
    # A kept part was cut at MAX_KEPT_PART_BYTES (or the total), or parts past
    # MAX_PARTS were skipped, or a header block was cut at MAX_HEADER_BYTES.
    truncated: bool
    defects: list[str] = field(default_factory=list)


class _Decoder:
    """A part's body decoded as it streams by, into a size and a SHA-256."""

    def __init__(self, transfer_encoding: str) -> None:
        self.encoding = transfer_encoding
        self.hash = hashlib.sha256()
        self.size = 0
        self._rest = b""
        self.undecodable = False

    def feed(self, chunk: bytes) -> None:
        if self.encoding == "base64":
            data = self._rest + chunk.translate(None, _NOT_BASE64)
            whole = len(data) - len(data) % 4
            self._rest = data[whole:]
            self._add(self._b64(data[:whole]))
        elif self.encoding == "quoted-printable":
            # Decoded by whole lines: a soft break (`=` CRLF) or `=3D` may straddle chunks.
            data = self._rest + chunk
            cut = data.rfind(b"\n") + 1 if len(data) < _BLOCK else len(data)
            self._rest = data[cut:]
            self._add(binascii.a2b_qp(data[:cut]))
        else:
            self._add(chunk)

    def _b64(self, data: bytes) -> bytes:
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            self.undecodable = True
            return b""

    def _add(self, data: bytes) -> None:
        if data:
            self.hash.update(data)
            self.size += len(data)

    def finish(self) -> None:
        if self.encoding == "base64" and self._rest:
            self._add(self._b64(self._rest + b"=" * (-len(self._rest) % 4)))
        elif self._rest:
            self._add(binascii.a2b_qp(self._rest))


class _Source:
    """The raw message, read in blocks: lines for header blocks, and bodies streamed to
    a sink up to the next delimiter line, found with `bytes.find` (a line at a time in
    Python took 2.4 s for a 10 MB attachment)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.read = 0
        self.buf = b""
        self.pos = 0
        self.eof = False
        # Whether `buf[0]` starts a line (the byte before it, gone, was a line feed).
        self._buf_starts_line = True

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.source.read(_BLOCK)
        if not data:
            self.eof = True
            return False
        self.read += len(data)
        if self.pos:
            self._buf_starts_line = self.buf[self.pos - 1 : self.pos] == b"\n"
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def at_line_start(self) -> bool:
        return self._buf_starts_line if self.pos == 0 else self.buf[self.pos - 1] == 0x0A

    def line(self) -> tuple[bytes, bool] | None:
        """The next line with its break, or `_CHUNK` bytes of a longer one; and whether it
        starts a line. None at the end."""
        starts = self.at_line_start()
        while True:
            end = self.buf.find(b"\n", self.pos, self.pos + _CHUNK)
            if end >= 0:
                return self._take(end + 1), starts
            if len(self.buf) - self.pos >= _CHUNK:
                return self._take(self.pos + _CHUNK), starts
            if not self._fill():
                return (self._take(len(self.buf)), starts) if self.pos < len(self.buf) else None

    def _take(self, end: int) -> bytes:
        taken = self.buf[self.pos : end]
        self.pos = end
        return taken

    def body(self, boundaries: list[bytes], sink: Callable[[bytes], None]) -> bytes | None:
        """Pass what comes to `sink`, up to the next delimiter line of `boundaries`, which
        is returned (None: the end of the message). The line break before a delimiter
        belongs to the delimiter (RFC 2046) and is not passed."""
        while True:
            buf, pos = self.buf, self.pos
            if self.at_line_start() and buf.startswith(b"--", pos):
                candidate = pos
            else:
                found = buf.find(b"\n--", pos) if boundaries else -1
                candidate = found + 1 if found >= 0 else -1
            if candidate < 0:
                # Keep a tail that may be the start of "\r\n--".
                if len(buf) - pos > 3:
                    sink(self._take(len(buf) - 3))
                if not self._fill():
                    sink(self._take(len(self.buf)))
                    return None
                continue
            end = buf.find(b"\n", candidate, candidate + _MAX_DELIMITER_LINE)
            if end < 0 and len(buf) - candidate < _MAX_DELIMITER_LINE and self._fill():
                continue  # the rest of the candidate line is still to come
            line_end = end + 1 if end >= 0 else min(len(buf), candidate + _MAX_DELIMITER_LINE)
            line = buf[candidate:line_end]
            if _delimiter(line, True, boundaries) is not None:
                piece = self._take(candidate)
                sink(piece[:-2] if piece.endswith(b"\r\n") else piece[:-1] if piece else piece)
                self.pos = line_end
                return line
            sink(self._take(candidate + 2))


def _delimiter(chunk: bytes, starts: bool, boundaries: list[bytes]) -> tuple[int, bool] | None:
    """Which boundary (index, innermost last) `chunk` is the delimiter of, and whether it
    closes its multipart; None for content."""
    if not starts or not chunk.startswith(b"--"):
        return None
    line = chunk.rstrip(b" \t\r\n")
    for index in range(len(boundaries) - 1, -1, -1):
        marker = b"--" + boundaries[index]
        if line == marker:
            return index, False
        if line == marker + b"--":
            return index, True
    return None


class _Skimmer:
    def __init__(self, source: IO[bytes]) -> None:
        self.source = _Source(source)
        self.out = bytearray()
        self.attachments: list[Attachment] = []
        self.parts = 0
        self.kept_total = 0
        self.truncated = False
        self.defects: list[str] = []

    def entity(self, boundaries: list[bytes], depth: int, in_report: bool = False) -> bytes | None:
        """Read one entity (header block, then body) up to a delimiter line of
        `boundaries`, which is returned (None: the end of the message). `in_report`: a
        part of a `multipart/report`."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            if self.parts == MAX_PARTS + 1:
                self.truncated = True
                self.defects.append("too_many_parts")
            return self._skip(boundaries)
        block, ended = self._header_block(boundaries)
        self.out += block
        if ended is not None:
            return ended
        headers = _HEADER_PARSER.parsebytes(block)
        boundary = _boundary(headers)
        if headers.get_content_maintype() == "multipart" and boundary:
            if depth >= MAX_DEPTH:
                self.defects.append("too_deeply_nested")
                return self._skip(boundaries)
            report = headers.get_content_type() == "multipart/report"
            return self._multipart(boundaries, boundary, depth, report)
        content_type = headers.get_content_type()
        if content_type in KEPT_TYPES and headers.get_content_disposition() != "attachment":
            return self._kept(boundaries)
        if in_report and content_type in RETURNED_TYPES:
            # The returned email's own header block, then its body measured.
            inner, ended = self._header_block(boundaries)
            self.out += inner
            if ended is not None:
                return ended
        return self._attachment(boundaries, headers)

    def _header_block(self, boundaries: list[bytes]) -> tuple[bytes, bytes | None]:
        block = bytearray()
        while (read := self.source.line()) is not None:
            chunk, starts = read
            if starts and chunk in (b"\r\n", b"\n"):
                break
            if _delimiter(chunk, starts, boundaries) is not None:
                self.defects.append("part_without_body")
                return self._closed(block), chunk
            if len(block) + len(chunk) > MAX_HEADER_BYTES:
                if "headers_cut" not in self.defects:
                    self.defects.append("headers_cut")
                self.truncated = True
                continue
            block += chunk
        return self._closed(block), None

    @staticmethod
    def _closed(block: bytearray) -> bytes:
        if block and not block.endswith(b"\n"):
            block += b"\r\n"
        return bytes(block + b"\r\n")

    def _multipart(
        self, boundaries: list[bytes], boundary: bytes, depth: int, report: bool = False
    ) -> bytes | None:
        inner = [*boundaries, boundary]
        mine = len(inner) - 1
        found = self._skip(inner)  # the preamble
        while found is not None:
            delimiter = _delimiter(found, True, inner)
            assert delimiter is not None
            owner, closes = delimiter
            if owner != mine:
                # An outer multipart's delimiter: this one was never closed.
                self.defects.append("unclosed_multipart")
                return found
            self.out += b"\r\n--" + boundary + (b"--\r\n" if closes else b"\r\n")
            if closes:
                return self._skip(boundaries)  # the epilogue
            found = self.entity(inner, depth + 1, report)
        self.defects.append("unclosed_multipart")
        return None

    def _kept(self, boundaries: list[bytes]) -> bytes | None:
        kept = 0

        def keep(chunk: bytes) -> None:
            nonlocal kept
            room = min(MAX_KEPT_PART_BYTES - kept, MAX_KEPT_TOTAL_BYTES - self.kept_total)
            if len(chunk) > room:
                self.truncated = True
                # Cut at a line's end: a half line of base64 or QP would not decode.
                chunk = chunk[: chunk.rfind(b"\n", 0, max(room, 0)) + 1]
            kept += len(chunk)
            self.kept_total += len(chunk)
            self.out += chunk

        return self.source.body(boundaries, keep)

    def _attachment(self, boundaries: list[bytes], headers: EmailMessage) -> bytes | None:
        decoder = _Decoder(str(headers.get("content-transfer-encoding", "")).strip().lower())
        found = self.source.body(boundaries, decoder.feed)
        decoder.finish()
        if decoder.undecodable:
            self.defects.append("undecodable_attachment")
        self.attachments.append(
            Attachment(
                filename=_filename(headers),
                content_type=headers.get_content_type()[:100],
                size=decoder.size,
                sha256=decoder.hash.hexdigest(),
            )
        )
        return found

    def _skip(self, boundaries: list[bytes]) -> bytes | None:
        return self.source.body(boundaries, _discard)


def _discard(chunk: bytes) -> None:
    pass


def _boundary(headers: EmailMessage) -> bytes | None:
    try:
        boundary = headers.get_boundary()
    except (ValueError, LookupError, TypeError):
        return None
    if not boundary or len(boundary) > 200:
        return None
    return boundary.encode("utf-8", "surrogateescape")


def _filename(headers: EmailMessage) -> str | None:
    try:
        name = headers.get_filename()
    except (ValueError, LookupError, TypeError):
        return None
    return single_line(name, 255) or None if name else None


def skim(source: IO[bytes]) -> Skimmed:
    """Read `source` (a raw RFC 5322 message, from its start) to its end, once."""
    skimmer = _Skimmer(source)
    skimmer.entity([], 0)
    return Skimmed(
        skeleton=bytes(skimmer.out),
        attachments=skimmer.attachments,
        size=skimmer.source.read,
        truncated=skimmer.truncated,
        defects=skimmer.defects,
    )
