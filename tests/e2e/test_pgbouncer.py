"""The service behind PgBouncer in transaction mode (Debian's package, 1.18 on Debian 12):
server connections are shared between transactions of any client, so a statement
prepared by name on one is unknown, or already taken, on the next. With
DATABASE_STATEMENT_CACHE=false the API and the worker run unchanged behind it."""

from __future__ import annotations

import asyncio
import gc
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app.db.session import create_engine_and_sessionmaker
from app.embedded import free_port
from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.stack import Services, Stack, run_stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).is_file()), None
)
if PGBOUNCER is None:
    pytest.skip(
        "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)",
        allow_module_level=True,
    )


@dataclass(frozen=True)
class PgBouncer:
    port: int

    def url(self, database_url: str) -> str:
        """`database_url` (the server's, direct) as a URL through this PgBouncer."""
        url = make_url(database_url)
        query = {k: v for k, v in url.query.items() if k != "host"}
        return url.set(host="127.0.0.1", port=self.port, query=query).render_as_string(
            hide_password=False
        )


def _server_address(database_url: str) -> tuple[str, int, str]:
    """host (or unix socket folder), port and user of the test PostgreSQL."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        sockets = sorted(Path(socket_dir).glob(".s.PGSQL.*"))
        assert sockets, f"no PostgreSQL socket in {socket_dir}"
        port = int(sockets[0].name.rsplit(".", 1)[1])
        return socket_dir, port, url.username or "postgres"
    return url.host or "127.0.0.1", url.port or 5432, url.username or "postgres"


def _run_as(socket_or_host: str) -> str | None:
    """PgBouncer refuses to run as root: as root, it runs as the owner of the server's
    socket folder (the user PostgreSQL runs as), who can reach the socket."""
    if os.geteuid() != 0:
        return None
    folder = Path(socket_or_host)
    owner = folder.stat().st_uid if folder.is_dir() else pwd.getpwnam("nobody").pw_uid
    return pwd.getpwuid(owner).pw_name


@pytest.fixture(scope="module")
def pgbouncer(services: Services) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the session's PostgreSQL, with two
    server connections per database for every client: transactions of different clients
    take turns on the same server connection."""
    host, port, user = _server_address(services.database_url)
    password = make_url(services.database_url).password or ""
    listen = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)
    config = folder / "pgbouncer.ini"
    credentials = f"user={user}" + (f" password={password}" if password else "")
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={port} {credentials}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\n"
        # `any`: the client's user name is ignored, the server login is the line above.
        "auth_type = any\n"
        "pool_mode = transaction\n"
        "default_pool_size = 2\nmax_client_conn = 500\n"
        # No unix socket of its own: the test needs only TCP.
        "unix_socket_dir =\n"
        # asyncpg sends these at start-up; PgBouncer 1.18 refuses unknown ones.
        "ignore_startup_parameters = extra_float_digits\n"
    )
    config.chmod(0o644)
    user_args = ["-u", who] if (who := _run_as(host)) else []
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        [str(PGBOUNCER), *user_args, str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(listen, process, folder / "pgbouncer.log")
        yield PgBouncer(port=listen)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen: {log.read_text(errors='replace')}")


async def _statement_reused_on_another_server_connection(
    database_url: str, *, statement_cache: bool
) -> None:
    """A client runs a statement, then runs it again in a later transaction that PgBouncer
    gives, for certain, another server connection: the one it first ran on is held by a
    second client meanwhile. (Left to chance, as with many clients at once, the pooler may
    open one server connection only, on which every named statement lives.)"""
    client, _ = create_engine_and_sessionmaker(
        database_url, pool_size=1, statement_cache=statement_cache
    )
    others = [
        create_engine_and_sessionmaker(database_url, pool_size=1, statement_cache=statement_cache)[
            0
        ]
        for _ in range(2)
    ]
    statement = text("SELECT count(*) + CAST(:v AS int) FROM notifications")
    try:
        async with client.begin() as connection:
            first = await connection.scalar(text("SELECT pg_backend_pid()"))
            await connection.scalar(statement, {"v": 1})
        # Transactions held open until one sits on the client's server connection: with
        # two server connections at most, the second does if the first did not.
        held = []
        for other in others:
            connection = await other.connect()
            await connection.begin()
            held.append(connection)
            if await connection.scalar(text("SELECT pg_backend_pid()")) == first:
                break
        else:
            raise AssertionError("no other client got the first server connection")
        for connection in held[:-1]:
            await connection.rollback()
            await connection.close()
        try:
            async with client.begin() as connection:
                assert await connection.scalar(text("SELECT pg_backend_pid()")) != first
                await connection.scalar(statement, {"v": 2})
        finally:
            await held[-1].rollback()
            await held[-1].close()
    finally:
        for engine in (client, *others):
            await engine.dispose()


class TestStatements:
    # The failed engine's connection (broken mid-statement by the pooler) is dropped, not
    # closed: collected here, its warning belongs to this test and is expected.
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    async def test_named_cached_statements_break_behind_transaction_pooling(
        self, services: Services, pgbouncer: PgBouncer
    ) -> None:
        """Why the setting exists: asyncpg names the statements it caches, and a named
        statement lives on the server connection it was prepared on only."""
        with pytest.raises(DBAPIError, match="prepared statement"):
            await _statement_reused_on_another_server_connection(
                pgbouncer.url(services.database_url), statement_cache=True
            )
        gc.collect()

    async def test_unnamed_statements_work_behind_transaction_pooling(
        self, services: Services, pgbouncer: PgBouncer
    ) -> None:
        await _statement_reused_on_another_server_connection(
            pgbouncer.url(services.database_url), statement_cache=False
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pooled_stack(services: Services, pgbouncer: PgBouncer) -> AsyncIterator[Stack]:
    async with run_stack(
        services,
        env={"DATABASE_STATEMENT_CACHE": "false", "DISPATCH_IDLE_SECONDS": "0.1"},
        fake_twilio_options={"callback_delay": 0.1},
        fake_imo_options={"callback_delay": 0.1},
        database_via=pgbouncer.url,
    ) as running:
        yield running


class TestTheServiceBehindPgBouncer:
    async def test_reminders_are_scheduled_sent_and_their_callbacks_recorded(
        self, pooled_stack: Stack
    ) -> None:
        key = await pooled_stack.create_api_key()
        async with pooled_stack.client(key) as api:
            patients = [await put_patient(api, phone(4)) for _ in range(5)]
            scheduled = await asyncio.gather(
                *(schedule(api, p["id"]) for p in patients for _ in range(4))
            )
            done = [await notification_in(api, n["id"], "delivered", timeout=60) for n in scheduled]
            assert all(d["attempts"][-1]["status"] == "delivered" for d in done)
            # The same idempotency key twice is still one notification.
            again = await api.post(
                "/v1/notifications",
                json=_body(patients[0]["id"]),
                headers={"Idempotency-Key": "pgbouncer-once"},
            )
            repeat = await api.post(
                "/v1/notifications",
                json=_body(patients[0]["id"]),
                headers={"Idempotency-Key": "pgbouncer-once"},
            )
            assert again.status_code == 201, again.text
            assert repeat.json()["id"] == again.json()["id"]
        assert "prepared statement" not in pooled_stack.logs()
        assert all(child.alive for child in pooled_stack.children())
        # The API and the worker (a pool of ten connections each) really went through
        # PgBouncer: PostgreSQL saw no more than its two server connections.
        database = make_url(pooled_stack.database_url).database
        engine, _ = create_engine_and_sessionmaker(pooled_stack.database_url, pool_size=1)
        try:
            async with engine.connect() as connection:
                seen = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )
        finally:
            await engine.dispose()
        assert 1 <= seen <= 2, seen


def _body(patient_id: str) -> dict[str, object]:
    return {
        "patient_id": patient_id,
        "purpose": "appointment_reminder",
        "template": "appointment_reminder.basic",
        "variables": {"appointment_date": "2026-12-01"},
    }
