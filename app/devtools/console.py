"""The terminal consoles of the `notify` commands.

They never raise for a reader that went away: `notify dev | tee log` and a Ctrl-C end
tee first, and printing to the closed pipe must not kill `notify dev` before it has
stopped its children. Once a stream's pipe is broken, what is printed to it is dropped.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import TextIO, cast

from rich.console import Console


class UnbreakableStream(io.TextIOBase):
    """A text stream that drops its output, instead of raising, once its reader is gone."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name  # "stdout" or "stderr": looked up at each write (tests swap them)
        self.broken = False

    @property
    def _stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except OSError as exc:
                self._break(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                self._break(exc)

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def _break(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
            raise exc
        self.broken = True
        # Python flushes the stream again at exit: point its descriptor at /dev/null so
        # that the interpreter's last flush does not fail either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


stdout = UnbreakableStream("stdout")
stderr = UnbreakableStream("stderr")
# A text stream in all but name: typeshed's IO[str] is a class that io.TextIOBase isn't.
console = Console(file=cast(TextIO, stdout), highlight=False)
# An error is one line, however narrow the terminal (or 80 columns, when not a terminal).
err_console = Console(file=cast(TextIO, stderr), highlight=False, soft_wrap=True)
