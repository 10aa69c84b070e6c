"""`notify dev`: the stack starts, and stops whole whatever happened to its terminal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app import embedded
from app.devtools.environment import notify_command, read_dev_env
from app.devtools.supervisor import http_ok

START_TIMEOUT = 120.0
STOP_WITHIN = 15.0  # seconds, on a loaded machine; the worker orphaned by the bug took ~55


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder the embedded PostgreSQL's system user can reach (pytest's tmp_path
    is private to this user); its servers stopped and removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="clinic-notify-devtools-"))
    try:
        yield path / "data"
    finally:
        embedded.stop_all(path / "data")
        shutil.rmtree(path, ignore_errors=True)


def dev_env(data_dir: Path) -> dict[str, str]:
    """`notify dev` as on a fresh clone: embedded servers in `data_dir`, the fakes."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("DATABASE_", "REDIS_", "IMO_", "TWILIO_", "PUBLIC_BASE_URL", "SMTP_", "EMAIL_")
        )
    }
    env.update(APP_ENV="development", DATA_DIR=str(data_dir), SECRET_KEY="")
    return env


def wait_for_line(process: subprocess.Popen[bytes], text: str, seen: list[str]) -> None:
    """Read stdout until a line contains `text`; fails after START_TIMEOUT."""
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            seen.append(raw.decode(errors="replace"))
            if text in seen[-1]:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(START_TIMEOUT), "".join(seen[-40:])


def gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive after `seconds`."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return alive


@pytest.mark.e2e
class TestStop:
    def test_ctrl_c_after_the_terminal_pipe_closed_stops_every_child(
        self, tmp_path: Path, data_dir: Path
    ) -> None:
        """`./scripts/dev | tee log`, then Ctrl-C: tee is gone before notify dev prints."""
        port = embedded.free_port()
        dev = subprocess.Popen(
            notify_command("dev", "--port", str(port)),
            env=dev_env(data_dir),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            seen: list[str] = []
            wait_for_line(dev, "Ctrl-C stops it", seen)
            children = psutil.Process(dev.pid).children(recursive=True)
            assert len(children) >= 4, children  # fake-imo, fake-twilio, api, worker
            assert embedded.postgres_running(data_dir)

            # Named before the signal: a child may be gone by the time it is asked after.
            named = {
                p.pid: " ".join(p.cmdline()[-4:]) for p in [psutil.Process(dev.pid), *children]
            }
            assert dev.stdout is not None
            dev.stdout.close()  # the reader of the pipe (tee) is gone
            began = time.monotonic()
            dev.send_signal(signal.SIGINT)

            alive = gone_within([psutil.Process(dev.pid), *children], STOP_WITHIN)
            took = time.monotonic() - began
            assert alive == [], f"alive {took:.1f}s after Ctrl-C: {[named[p.pid] for p in alive]}"
            assert dev.wait() == 0  # not killed by its broken pipe: a stop asked for
            assert not embedded.postgres_running(data_dir)
        finally:
            if dev.poll() is None:
                for process in psutil.Process(dev.pid).children(recursive=True):
                    process.kill()
            dev.kill()
            dev.wait()


@pytest.mark.e2e
class TestWorkerWithoutItsServers:
    def test_exits_within_5_s_of_sigterm(self, tmp_path: Path, data_dir: Path) -> None:
        database_url = embedded.ensure_postgres(data_dir, durable=False)
        redis_url = embedded.ensure_redis(data_dir)
        env = {
            **dev_env(data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": "k" * 40,
        }
        subprocess.run(notify_command("migrate"), env=env, check=True, capture_output=True)
        ready = tmp_path / "ready"
        with (tmp_path / "worker.log").open("wb") as log:  # the child keeps its copy
            worker = subprocess.Popen(
                notify_command("worker", "--ready-file", str(ready)),
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)

        log_path = tmp_path / "worker.log"
        seen = len(log_path.read_text(errors="replace"))
        embedded.stop_all(data_dir)  # PostgreSQL and Redis are gone
        # Until the worker has run into it: a warning or an error in its log.
        deadline = time.monotonic() + START_TIMEOUT
        while not any(
            level in log_path.read_text(errors="replace")[seen:]
            for level in ('"level":"warning"', '"level":"error"')
        ):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        began = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        took = time.monotonic() - began
        assert took < 5, f"{took:.1f}s\n" + (tmp_path / "worker.log").read_text()[-3000:]


@pytest.mark.e2e
class TestAnotherTerminal:
    def test_notify_invite_reaches_the_fakes_of_notify_dev_with_nothing_set(
        self, tmp_path: Path, data_dir: Path
    ) -> None:
        log_path = tmp_path / "dev.log"
        with log_path.open("wb") as log:  # the child keeps its copy
            dev = subprocess.Popen(
                notify_command("dev", "--port", str(embedded.free_port())),
                env=dev_env(data_dir),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while "Ctrl-C stops it" not in log_path.read_text(errors="replace"):
                assert dev.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.2)
            banner = log_path.read_text(errors="replace")
            # The dashboard's URL and its development admin, kept for the next start.
            email, _, password = (data_dir / "dev-operator").read_text().strip().partition(" ")
            assert "/dashboard/" in banner and email in banner and password in banner
            written = read_dev_env(data_dir)
            imo_root = written["IMO_BASE_URL"].removesuffix("/api/simple")
            assert http_ok(f"{imo_root}/_fake/stats")
            assert written["PUBLIC_BASE_URL"].startswith("http://127.0.0.1:")
            # The SMTP receiver of replies and bounces, beside the fake mail, answers.
            inbound = re.search(r"Inbound mail\s+smtp://127\.0\.0\.1:(\d+)", banner)
            assert inbound is not None, banner
            with smtplib.SMTP("127.0.0.1", int(inbound.group(1)), timeout=10) as smtp:
                assert smtp.noop()[0] == 250
            # The fake gateway phone polls the API out of the box.
            name = (data_dir / "dev-gateway").read_text().split()[0]
            assert "Fake gateway" in banner and name in banner
            api_key = (data_dir / "dev-api-key").read_text().strip()

            def polled() -> bool:
                listed = httpx.get(
                    f"{written['PUBLIC_BASE_URL']}/v1/gateways",
                    headers={"Authorization": f"Bearer {api_key}"},
                    timeout=5,
                )
                mine = [g for g in listed.json()["data"] if g["name"] == name]
                return bool(mine and mine[0]["last_polled_at"])

            deadline = time.monotonic() + 30
            while not polled():
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.5)

            elsewhere = tmp_path / "another-terminal"
            elsewhere.mkdir()
            invite = subprocess.run(
                notify_command("invite"),
                env=dev_env(data_dir),  # no IMO_*, no PUBLIC_BASE_URL
                cwd=elsewhere,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert invite.returncode == 0, invite.stdout + invite.stderr
            assert "Invitation round" in invite.stdout
        finally:
            dev.send_signal(signal.SIGINT)
            dev.wait(60)
        assert not (data_dir / "dev.env").exists()
