"""`notify api` and `notify worker` with Redis unreachable (issue 11, item 8): a bounded
wait and a clear "Redis unreachable at ..." instead of 12+ minutes of silent retries,
and SIGTERM obeyed at once whatever they wait on. Redis is a closed port here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from app.devtools.environment import notify_command
from app.embedded import free_port
from tests.test_config import PRODUCTION


def start(command: str, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], int]:
    """`notify COMMAND` in production with REDIS_URL on a port nobody listens on."""
    api_port = free_port()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **{name.upper(): str(value) for name, value in PRODUCTION.items()},
        "TWILIO_SMS_FROM": "+15005550006",
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        **env,
    }
    argv = notify_command(command)
    if command == "api":
        argv += ["--port", str(api_port)]
    process = subprocess.Popen(
        argv,
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, api_port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("command", ["api", "worker"])
def test_gives_up_with_a_clear_message_after_the_start_wait(tmp_path: Path, command: str) -> None:
    process, port = start(command, tmp_path, REDIS_START_TIMEOUT_SECONDS="2")
    try:
        output, _ = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output
    flat = " ".join(output.split())
    assert "Redis unreachable at redis://127.0.0.1:" in flat, output
    assert "hunter2" not in output and "Traceback" not in output
    assert not port_open(port)


@pytest.mark.parametrize("command", ["api", "worker"])
def test_sigterm_stops_it_within_seconds_while_it_waits(tmp_path: Path, command: str) -> None:
    process, _ = start(command, tmp_path, REDIS_START_TIMEOUT_SECONDS="600")
    try:
        time.sleep(6)  # imports done, waiting on Redis
        assert process.poll() is None, process.communicate()[0]
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert time.monotonic() - began < 5, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
