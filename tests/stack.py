"""The real process stack for end-to-end tests.

`run_stack(services)` starts, as child processes on free loopback ports, the fake Imo,
the fake Twilio, the fake WhatsApp, the embedded SMTP server (`notify fake-mail`), the
API (`notify api`) and N workers (`notify worker`), all pointed at each other and at a
database and Redis DB of their own (a fresh `clinic_notify_e2e_N` on the test server,
migrated; the next Redis DB number), so that
the committed data of end-to-end tests never meets the rolled-back world of the unit
tests.

Every wait has a time-out; a child that dies while starting fails the start with its
output; at the end every child gets SIGTERM, then SIGKILL, and also dies with the test
process should that be killed. The children's output goes to log files in the stack's
folder; conftest attaches what they wrote during a failed test to its report.

Start and signal processes from the event loop's thread (the pytest main thread): the
children's death signal is tied to the thread that forked them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.auth import service as auth_service
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import notify_command, upgrade_head
from app.devtools.supervisor import spawn, stop_processes
from app.embedded import free_port
from app.fakes.credentials import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_TWILIO_SMS_FROM,
    FAKE_WHATSAPP_ACCESS_TOKEN,
    FAKE_WHATSAPP_APP_SECRET,
    FAKE_WHATSAPP_PHONE_NUMBER_ID,
    FAKE_WHATSAPP_VERIFY_TOKEN,
)

TEST_SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"

START_TIMEOUT = 90.0  # four Python processes importing the app on two cores, plus margin
STOP_TIMEOUT = 15.0

# Stacks running now (conftest reads their logs when a test fails).
ACTIVE_STACKS: list[Stack] = []
_stack_numbers = itertools.count()


class StackError(RuntimeError):
    """A child would not start or died; the message carries the children's output."""


@dataclass(frozen=True)
class Services:
    """The test session's PostgreSQL and Redis."""

    database_url: str
    redis_url: str
    data_dir: Path


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def read_log(self, since: int = 0, max_chars: int = 20_000) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(since)
                data = handle.read()
        except OSError:
            return ""
        text_ = data.decode(errors="replace")
        return text_ if len(text_) <= max_chars else "...\n" + text_[-max_chars:]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


# Redis has 16 databases; 0 is the test session's own.
STACK_REDIS_DBS = range(1, 16)


def free_redis_db() -> int:
    """A Redis database no running stack uses. Numbering stacks modulo 15 once gave the
    16th stack of a session the database of the session-wide stack, still running: its
    workers took the other stack's arq jobs (the sweeper among them) and ran them against
    their own PostgreSQL database."""
    used = {stack.redis_db for stack in ACTIVE_STACKS}
    for db in STACK_REDIS_DBS:
        if db not in used:
            return db
    raise RuntimeError(f"more than {len(STACK_REDIS_DBS)} stacks running at once")


def with_redis_db(url: str, db: int) -> str:
    """`url` with its database number replaced by `db`."""
    parts = url.split("?", 1)
    base = parts[0].rstrip("/")
    head, _, last = base.rpartition("/")
    if last.isdigit() and head.count("/") >= 2:
        base = head
    return f"{base}/{db}" + (f"?{parts[1]}" if len(parts) > 1 else "")


async def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the server of `server_url`; returns its URL."""
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return _with_database(server_url, name)


@dataclass
class Database:
    """A database of its own on the session's server, for code that commits from several
    connections at once (worker loops, runners), which one rolled-back test connection
    cannot host. Tests empty it rather than roll it back."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    url: str

    async def empty(self) -> None:
        """No patient (nor anything of theirs), invitation round, API key, switch, gateway, group,
        broadcast or trigger rule."""
        async with self.engine.begin() as connection:
            await connection.execute(
                text(
                    "TRUNCATE patients, imo_invitation_rounds, api_keys, switches, gateways, "
                    "groups, broadcasts, trigger_rules CASCADE"
                )
            )


@contextlib.asynccontextmanager
async def migrated_database(services: Services, name: str) -> AsyncIterator[Database]:
    """Database `name`, created afresh on the session's server and migrated."""
    url = await recreate_database(services.database_url, name)
    await asyncio.to_thread(upgrade_head, url, configure_logging=False)
    engine, sessionmaker = create_engine_and_sessionmaker(url)
    try:
        yield Database(engine, sessionmaker, url)
    finally:
        await engine.dispose()


class Stack:
    """A running stack; build it with `run_stack`."""

    def __init__(
        self,
        services: Services,
        *,
        workers: int,
        fake_imo_options: Mapping[str, Any],
        fake_twilio_options: Mapping[str, Any],
        fake_whatsapp_options: Mapping[str, Any],
        env: Mapping[str, str],
        database_via: Callable[[str], str] | None = None,
    ) -> None:
        self.number = next(_stack_numbers)
        # The API's and workers' DATABASE_URL from the stack's own (e.g. through a pooler);
        # migrations and the tests' own queries use the database directly.
        self.database_via = database_via or (lambda url: url)
        self.services = services
        self.workdir = Path(tempfile.mkdtemp(prefix=f"stack{self.number}-", dir=services.data_dir))
        self.initial_workers = workers
        self.fake_imo_options = dict(fake_imo_options)
        self.fake_twilio_options = dict(fake_twilio_options)
        self.fake_whatsapp_options = dict(fake_whatsapp_options)
        self.extra_env = dict(env)

        self.imo_port, self.twilio_port, self.api_port = free_port(), free_port(), free_port()
        self.imo_root = f"http://127.0.0.1:{self.imo_port}"
        self.imo_url = f"{self.imo_root}/api/simple"
        self.twilio_url = f"http://127.0.0.1:{self.twilio_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.whatsapp_port = free_port()
        self.whatsapp_url = f"http://127.0.0.1:{self.whatsapp_port}"
        # The embedded SMTP server (`notify fake-mail`): SMTP, and HTTP for /_fake/mail.
        self.smtp_port, self.mail_port = free_port(), free_port()
        self.mail_url = f"http://127.0.0.1:{self.mail_port}"
        self.database_url = ""
        self.redis_db = free_redis_db()
        self.redis_url = with_redis_db(services.redis_url, self.redis_db)
        self.env: dict[str, str] = {}

        self.fakes: list[Child] = []
        self.api: Child | None = None
        self.workers: list[Child] = []
        self._worker_numbers = itertools.count()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.database_url = await recreate_database(
            self.services.database_url, f"clinic_notify_e2e_{self.number}"
        )
        await asyncio.to_thread(upgrade_head, self.database_url, configure_logging=False)
        await self._flush_redis()
        self.env = self._environment()

        imo_options = _set_options(self.fake_imo_options)
        twilio_options = _set_options(self.fake_twilio_options)
        whatsapp_options = _set_options(
            {"webhook_url": f"{self.api_url}/callbacks/whatsapp", **self.fake_whatsapp_options}
        )
        self.fakes = [
            self._spawn("fake-imo", ["fake-imo", "--port", str(self.imo_port), *imo_options]),
            self._spawn(
                "fake-twilio", ["fake-twilio", "--port", str(self.twilio_port), *twilio_options]
            ),
            self._spawn(
                "fake-whatsapp",
                ["fake-whatsapp", "--port", str(self.whatsapp_port), *whatsapp_options],
            ),
            self._spawn(
                "fake-mail",
                [
                    "fake-mail",
                    "--smtp-port",
                    str(self.smtp_port),
                    "--port",
                    str(self.mail_port),
                    "--folder",
                    str(self.workdir / "mail"),
                ],
            ),
        ]
        self.api = self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.api_port)])
        waits = [
            self._wait_http(self.fakes[0], f"{self.imo_root}/_fake/stats"),
            self._wait_http(self.fakes[1], f"{self.twilio_url}/_fake/stats"),
            self._wait_http(self.fakes[2], f"{self.whatsapp_url}/_fake/stats"),
            self._wait_http(self.fakes[3], f"{self.mail_url}/_fake/stats"),
            self._wait_http(self.api, f"{self.api_url}/healthz"),
        ]
        pending_workers = [self._launch_worker() for _ in range(self.initial_workers)]
        waits += [self._wait_file(child, ready) for child, ready in pending_workers]
        await asyncio.gather(*waits)

    async def stop(self) -> None:
        # The API and workers first, so that nothing is left calling a stopped fake.
        await asyncio.to_thread(self._stop_children, [*self.workers, self.api])
        await asyncio.to_thread(self._stop_children, self.fakes)

    def _stop_children(self, children: list[Child | None]) -> None:
        live = [c for c in children if c is not None and c.process is not None]
        stop_processes([c.process for c in live if c.process is not None], STOP_TIMEOUT)
        for child in live:
            if child.log_file is not None:
                child.log_file.close()

    # ------------------------------------------------------------------ workers

    async def start_worker(self, *, wait: bool = True) -> int:
        """Start one more worker; returns its index once it has started (at once with
        `wait=False`: fault tests replace killed workers without pausing the kills)."""
        child, ready = self._launch_worker()
        if wait:
            await self._wait_file(child, ready)
        return self.workers.index(child)

    async def kill_worker(
        self, index: int, sig: signal.Signals = signal.SIGKILL, timeout: float = 30.0
    ) -> int:
        """Send `sig` to worker `index` and wait for it to exit; returns its exit code."""
        child = self.workers[index]
        assert child.process is not None
        if child.process.poll() is None:
            child.process.send_signal(sig)
        deadline = time.monotonic() + timeout
        while child.process.poll() is None:
            if time.monotonic() > deadline:
                child.process.kill()
                raise StackError(f"{child.name} did not exit within {timeout}s of {sig.name}")
            await asyncio.sleep(0.05)
        return child.process.returncode

    def live_workers(self) -> list[int]:
        return [i for i, child in enumerate(self.workers) if child.alive]

    def ready_workers(self) -> list[int]:
        """Live workers that have finished starting (their dispatch loops run)."""
        return [
            i
            for i, child in enumerate(self.workers)
            if child.alive and (self.workdir / f"{child.name}.ready").exists()
        ]

    def _launch_worker(self) -> tuple[Child, Path]:
        number = next(self._worker_numbers)
        ready = self.workdir / f"worker-{number}.ready"
        child = self._spawn(f"worker-{number}", ["worker", "--ready-file", str(ready)])
        self.workers.append(child)
        return child, ready

    # ------------------------------------------------------------------ helpers for tests

    async def create_api_key(self, name: str = "e2e") -> str:
        """A new API key, inserted straight into the stack's database."""
        _, plaintext = await auth_service.issue_api_key(self.database_url, name)
        return plaintext

    def client(self, api_key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client on the API; with `api_key`, authorised."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        kwargs.setdefault("timeout", 30.0)
        return httpx.AsyncClient(base_url=self.api_url, headers=headers, **kwargs)

    async def imo_stats(self) -> dict[str, Any]:
        return await self._get_json(f"{self.imo_root}/_fake/stats")

    async def twilio_stats(self) -> dict[str, Any]:
        return await self._get_json(f"{self.twilio_url}/_fake/stats")

    async def whatsapp_stats(self) -> dict[str, Any]:
        return await self._get_json(f"{self.whatsapp_url}/_fake/stats")

    async def mail(self, to: str | None = None) -> list[dict[str, Any]]:
        """The fake mail server's messages, newest first (to `to` only, if given)."""
        query = f"?to={httpx.QueryParams({'to': to})['to']}" if to else ""
        items: list[dict[str, Any]] = (await self._get_json(f"{self.mail_url}/_fake/mail{query}"))[
            "items"
        ]
        return items

    async def mail_message(self, message_id: str) -> dict[str, Any]:
        """One message as the fake mail server parses it: headers, text, html."""
        return await self._get_json(f"{self.mail_url}/_fake/mail/{message_id}?format=json")

    async def configure_fakes(
        self,
        imo: Mapping[str, Any] | None = None,
        twilio: Mapping[str, Any] | None = None,
        whatsapp: Mapping[str, Any] | None = None,
        mail: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the fakes' behaviour now (`POST /_fake/config`)."""
        async with httpx.AsyncClient(timeout=10) as client:
            for root, changes in (
                (self.imo_root, imo),
                (self.twilio_url, twilio),
                (self.whatsapp_url, whatsapp),
                (self.mail_url, mail),
            ):
                if changes:
                    response = await client.post(f"{root}/_fake/config", json=dict(changes))
                    response.raise_for_status()

    async def reset_fakes(self) -> None:
        """Forget every message and pending callback (`POST /_fake/reset`)."""
        async with httpx.AsyncClient(timeout=10) as client:
            for root in (self.imo_root, self.twilio_url, self.whatsapp_url, self.mail_url):
                (await client.post(f"{root}/_fake/reset")).raise_for_status()

    def children(self) -> list[Child]:
        return [*self.fakes, *([self.api] if self.api else []), *self.workers]

    def log_offsets(self) -> dict[str, int]:
        return {child.name: child.log_size() for child in self.children()}

    def logs(self, since: Mapping[str, int] | None = None) -> str:
        """Every child's output (since `since`, from `log_offsets()`), with its exit code."""
        sections = []
        for child in self.children():
            output = child.read_log((since or {}).get(child.name, 0)).rstrip()
            code = child.process.poll() if child.process is not None else None
            state = "running" if code is None else f"exited {code}"
            sections.append(f"----- {child.name} ({state}) -----\n{output or '(no output)'}")
        return "\n".join(sections)

    # ------------------------------------------------------------------ internals

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
        env.update(
            APP_ENV="test",
            DATABASE_URL=self.database_via(self.database_url),
            REDIS_URL=self.redis_url,
            SECRET_KEY=TEST_SECRET_KEY,
            PUBLIC_BASE_URL=self.api_url,
            IMO_BASE_URL=self.imo_url,
            IMO_USERNAME=FAKE_IMO_USERNAME,
            IMO_PASSWORD=FAKE_IMO_PASSWORD,
            TWILIO_BASE_URL=self.twilio_url,
            TWILIO_ACCOUNT_SID=FAKE_TWILIO_ACCOUNT_SID,
            TWILIO_AUTH_TOKEN=FAKE_TWILIO_AUTH_TOKEN,
            TWILIO_SMS_FROM=FAKE_TWILIO_SMS_FROM,
            FAKE_PROVIDERS="true",
            WHATSAPP_BASE_URL=self.whatsapp_url,
            WHATSAPP_PHONE_NUMBER_ID=FAKE_WHATSAPP_PHONE_NUMBER_ID,
            WHATSAPP_ACCESS_TOKEN=FAKE_WHATSAPP_ACCESS_TOKEN,
            WHATSAPP_APP_SECRET=FAKE_WHATSAPP_APP_SECRET,
            WHATSAPP_VERIFY_TOKEN=FAKE_WHATSAPP_VERIFY_TOKEN,
            # WHATSAPP_PROVIDER=twilio (in `env`) sends from here, through the fake Twilio.
            WHATSAPP_TWILIO_FROM=FAKE_TWILIO_SMS_FROM,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.smtp_port),
            SMTP_SECURITY="none",
            EMAIL_FROM="Clinic <clinic@notify.test>",
            DATA_DIR=str(self.workdir / "data"),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, notify_command(*args), self.workdir / f"{name}.log")
        child.log_file = child.log_path.open("ab")
        # cwd: the stack's folder, where no developer's .env can leak in.
        child.process = spawn(
            child.argv, self.env, stdout=child.log_file, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        return child

    def _fail(self, message: str) -> StackError:
        return StackError(f"{message}\n{self.logs()}")

    async def _wait_http(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not child.alive:
                    raise self._fail(f"{child.name} exited while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self._fail(f"{child.name} did not answer {url} in {START_TIMEOUT}s")
                await asyncio.sleep(0.1)

    async def _wait_file(self, child: Child, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            if not child.alive:
                raise self._fail(f"{child.name} exited while starting")
            if time.monotonic() > deadline:
                raise self._fail(f"{child.name} did not start in {START_TIMEOUT}s")
            await asyncio.sleep(0.1)

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    async def _flush_redis(self) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(self.redis_url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()


def _set_options(options: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


@contextlib.asynccontextmanager
async def run_stack(
    services: Services,
    *,
    workers: int = 1,
    fake_imo_options: Mapping[str, Any] | None = None,
    fake_twilio_options: Mapping[str, Any] | None = None,
    fake_whatsapp_options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    database_via: Callable[[str], str] | None = None,
) -> AsyncIterator[Stack]:
    """Start a stack, yield it, stop it. `*_options` are the fakes' config fields
    (`FakeImoConfig`, `FakeTwilioConfig`, `FakeWhatsAppConfig`); `env` adds or overrides
    settings of the API and workers (e.g. `{"DISPATCH_IDLE_SECONDS": "0.1"}`)."""
    stack = Stack(
        services,
        workers=workers,
        fake_imo_options=fake_imo_options or {},
        fake_twilio_options=fake_twilio_options or {},
        fake_whatsapp_options=fake_whatsapp_options or {},
        env=env or {},
        database_via=database_via,
    )
    ACTIVE_STACKS.append(stack)
    try:
        try:
            await stack.start()
        except BaseException:
            await stack.stop()
            raise
        try:
            yield stack
        finally:
            await stack.stop()
    finally:
        ACTIVE_STACKS.remove(stack)
