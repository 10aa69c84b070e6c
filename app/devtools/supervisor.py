"""Child processes that stop with their parent, and the probes that wait for them."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

_libc: Any = None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdout: int | IO[Any],
    stderr: int | IO[Any],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A child in its own session (a terminal's Ctrl-C reaches only its parent, which
    stops it in order) that still dies with its parent on Linux. Call from the main
    thread: the death signal follows the thread that forked."""
    global _libc
    if _libc is None and sys.platform == "linux":
        # Loaded here, in the parent: the child must not run the dynamic loader.
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)
    return subprocess.Popen(  # noqa: S603 - argv is built here, not taken from input
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM each live process, wait up to `timeout` in all, then SIGKILL the rest."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own URLs
            return 200 <= int(response.status) < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: connections of a server just stopped (TIME_WAIT) do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
