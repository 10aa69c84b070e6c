"""The `notify` command: runs each part of the service, or all of them with `notify dev`.

Without `DATABASE_URL` / `REDIS_URL` every command that needs them uses the embedded
PostgreSQL and Redis of the data folder (`DATA_DIR`, default `.data`), started on demand
and shared by every `notify` process using that folder.

More commands plug in here: `cli.command("name")(function)` or
`cli.add_typer(sub_app, name="name")`. Import heavy modules inside the command function,
so that `notify --help` and the other commands stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

import app as app_package
from app import embedded
from app.bench.cli import bench_cli
from app.config import Settings, get_settings
from app.experiments.cli import experiments_cli
from app.imo.cli import invite

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

cli = typer.Typer(
    name="notify",
    help="clinic-notify: patient reminders over Imo, WhatsApp and SMS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
api_keys_cli = typer.Typer(help="Manage the clinic system's API keys.", no_args_is_help=True)
cli.add_typer(api_keys_cli, name="api-keys")
cli.add_typer(bench_cli, name="bench")
cli.add_typer(experiments_cli, name="experiments")
cli.command("invite")(invite)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

# The fakes' well-known credentials and a Twilio magic test sender: they reach nobody.
FAKE_IMO_USERNAME = "fake-imo"
FAKE_IMO_PASSWORD = "fake-imo-password"  # noqa: S105
FAKE_TWILIO_ACCOUNT_SID = "ACfake00000000000000000000000000"
FAKE_TWILIO_AUTH_TOKEN = "fake-twilio-token"  # noqa: S105
FAKE_WHATSAPP_PHONE_NUMBER_ID = "100000000000001"
FAKE_WHATSAPP_ACCESS_TOKEN = "fake-whatsapp-token"  # noqa: S105
FAKE_WHATSAPP_APP_SECRET = "fake-whatsapp-app-secret"  # noqa: S105
FAKE_WHATSAPP_VERIFY_TOKEN = "fake-whatsapp-verify-token"  # noqa: S105
FAKE_TWILIO_SMS_FROM = "+15005550006"


def main() -> None:
    cli()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it comes with uvicorn[standard]), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def notify_command(*args: str) -> list[str]:
    """argv that runs `notify ARGS` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", "from app.cli import main; main()", *args]


# ---------------------------------------------------------------------------- environment


def checked_settings() -> Settings:
    """The settings, or exit 1 naming every problem (no traceback)."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()
        )
        err_console.print(f"[red]refusing to start:[/red] {problems}")
        raise typer.Exit(1) from None


def prepare_environment(*, redis: bool = True) -> tuple[str, str]:
    """Resolve the database and Redis URLs (embedded ones when unset) into `os.environ`.

    `redis=False` (commands that need only the database) starts no embedded Redis and
    returns the configured URL, perhaps empty. Also gives development a stable
    SECRET_KEY kept in the data folder. Everything read later through `get_settings()`
    (and every child process) sees the result. Exits with a message when an embedded
    service is missing or fails, or when the settings are refused (in production: a
    missing or placeholder secret, no PUBLIC_BASE_URL).
    """
    settings = checked_settings()
    data_dir = Path(settings.data_dir)
    try:
        database_url = settings.database_url or embedded.ensure_postgres(data_dir)
        redis_url = settings.redis_url
        if redis and not redis_url:
            redis_url = embedded.ensure_redis(data_dir)
        updates = {"DATABASE_URL": database_url}
        if redis_url:
            updates["REDIS_URL"] = redis_url
        if not settings.secret_key.get_secret_value() and not settings.is_production:
            updates["SECRET_KEY"] = embedded.ensure_secret_key(data_dir)
    except embedded.EmbeddedServiceError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    os.environ.update(updates)
    get_settings.cache_clear()
    return database_url, redis_url


def alembic_config(
    database_url: str | None = None, *, configure_logging: bool = True
) -> AlembicConfig:
    """An alembic Config that works from any cwd: the source tree's alembic.ini and
    migrations/ when the package runs from a checkout, else the installed `migrations`
    package. `database_url` overrides the settings' URL for env.py."""
    from alembic.config import Config

    source_root = Path(app_package.__file__).resolve().parent.parent
    if (source_root / "alembic.ini").is_file() and (source_root / "migrations").is_dir():
        config = Config(str(source_root / "alembic.ini"))
        script_location = source_root / "migrations"
    else:
        import migrations

        config = Config()
        # A namespace package (no __init__.py): its one folder is in __path__.
        script_location = Path(next(iter(migrations.__path__))).resolve()
    config.set_main_option("script_location", str(script_location))
    if config.get_main_option("path_separator") is None:
        config.set_main_option("path_separator", "os")  # else a DeprecationWarning
    if database_url:
        config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = configure_logging
    return config


def upgrade_head(database_url: str | None = None, *, configure_logging: bool = True) -> None:
    """`alembic upgrade head`, from any cwd. Uses `database_url`, else the settings'."""
    from alembic import command

    command.upgrade(alembic_config(database_url, configure_logging=configure_logging), "head")


async def create_api_key(database_url: str, name: str) -> tuple[str, str]:
    """Create and commit an API key; returns (its id, the plaintext)."""
    from app.auth import service as auth_service
    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            api_key, plaintext = await auth_service.create_api_key(session, name)
            await session.commit()
            return str(api_key.id), plaintext
    finally:
        await engine.dispose()


async def api_key_is_live(database_url: str, plaintext: str) -> bool:
    from app.auth import service as auth_service
    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            return await auth_service.authenticate(session, plaintext) is not None
    finally:
        await engine.dispose()


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` options: each value read as JSON (numbers, true/false), else text."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        overrides[key.strip().replace("-", "_")] = value
    return overrides


# ---------------------------------------------------------------------------- commands


@cli.command()
def migrate() -> None:
    """Apply the database migrations (`alembic upgrade head`)."""
    database_url, _ = prepare_environment(redis=False)
    upgrade_head(database_url)
    console.print("[green]database is at the latest migration[/green]")


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Processes (or run several `notify api`).")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from app.logs import configure_logging

    prepare_environment()
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # the app's structured logging, not uvicorn's own
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


@cli.command()
def worker(
    burst: Annotated[
        bool, typer.Option(help="Run the queued jobs, then exit (tests, one-off runs).")
    ] = False,
    ready_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Touched once the worker has started.")
    ] = None,
) -> None:
    """Run an arq worker; run as many as you like, on any machines."""
    from arq import run_worker

    from app.logs import configure_logging

    prepare_environment()
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    from workers.settings import WorkerSettings

    overrides: dict[str, Any] = {}
    if burst:
        overrides["burst"] = True
    if ready_file is not None:
        original = getattr(WorkerSettings, "on_startup", None)

        async def on_startup(ctx: dict[str, Any]) -> None:
            if original is not None:
                await original(ctx)
            ready_file.touch()

        overrides["on_startup"] = on_startup
    # arq takes the current event loop; make one instead of relying on a deprecated default.
    # uvloop halves the event loop's share of each request on the send path.
    asyncio.set_event_loop(new_event_loop())
    # arq types settings as a protocol class that plain settings classes do not subclass.
    run_worker(cast(Any, WorkerSettings), **overrides)


@api_keys_cli.command("create")
def api_keys_create(name: Annotated[str, typer.Argument(help="Who the key is for.")]) -> None:
    """Create an API key. The key is the last line printed, shown only this once."""
    database_url, _ = prepare_environment(redis=False)
    key_id, plaintext = asyncio.run(create_api_key(database_url, name))
    console.print(f"Created API key [bold]{name}[/bold] (id {key_id}). Keep it now:")
    print(plaintext, flush=True)


@cli.command("fake-imo")
def fake_imo(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8001,
    callback_delay: Annotated[
        float | None, typer.Option(help="Seconds before accept/read callbacks.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any FakeImoConfig field, e.g. --set error_rate=0.1."),
    ] = None,
) -> None:
    """Serve the fake Imo partner API (base URL http://HOST:PORT/api/simple)."""
    from app.fakes import imo

    options = parse_overrides(set_ or [])
    if callback_delay is not None:
        options["callback_delay"] = callback_delay
    imo.run(host, port, imo.FakeImoConfig(**options))


@cli.command("fake-twilio")
def fake_twilio(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8002,
    callback_delay: Annotated[
        float | None, typer.Option(help="Seconds between status callbacks.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any FakeTwilioConfig field, e.g. --set error_rate=0.1."),
    ] = None,
) -> None:
    """Serve the fake Twilio Messages API (base URL http://HOST:PORT)."""
    from app.fakes import twilio

    options = parse_overrides(set_ or [])
    if callback_delay is not None:
        options["callback_delay"] = callback_delay
    twilio.run(host, port, twilio.FakeTwilioConfig(**options))


# ---------------------------------------------------------------------------- notify dev


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


@dataclass
class _Child:
    name: str
    argv: list[str]
    ready_url: str | None
    style: str
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class DevStack:
    """The children of `notify dev`: started together, stopped together."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.children: list[_Child] = []
        self.stopping = threading.Event()

    def add(self, name: str, argv: list[str], ready_url: str | None, style: str) -> None:
        self.children.append(_Child(name, argv, ready_url, style))

    def start(self) -> None:
        for child in self.children:
            child.process = spawn(
                child.argv, self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        # Readers only after every fork: no thread runs while a child is being forked.
        for child in self.children:
            child.reader = threading.Thread(target=self._relay, args=(child,), daemon=True)
            child.reader.start()

    def _relay(self, child: _Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        prefix = Text(f"{child.name:<11}| ", style=child.style)
        for raw in child.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            console.print(prefix + Text(line), soft_wrap=True)

    def dead_child(self) -> _Child | None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def wait_ready(self, timeout: float = 90) -> bool:
        """True once every child with a ready URL answers; False if one died or on stop."""
        deadline = time.monotonic() + timeout
        pending = [child for child in self.children if child.ready_url]
        while pending:
            if self.stopping.is_set() or self.dead_child() is not None:
                return False
            if time.monotonic() > deadline:
                names = ", ".join(child.name for child in pending)
                err_console.print(f"[red]not ready after {timeout:.0f}s:[/red] {names}")
                return False
            pending = [c for c in pending if not http_ok(c.ready_url or "", timeout=0.5)]
            if pending:
                self.stopping.wait(0.2)
        return True

    def stop(self) -> None:
        # The API and workers first, so nothing is left calling a stopped fake.
        processes = [c.process for c in reversed(self.children) if c.process is not None]
        stop_processes(processes)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)


def _dev_api_key(data_dir: Path, database_url: str) -> tuple[str, bool]:
    """The development key kept in `.data/dev-api-key`; (key, created now)."""
    path = data_dir / "dev-api-key"
    if path.exists():
        key = path.read_text().strip()
        if key and asyncio.run(api_key_is_live(database_url, key)):
            return key, False
    _, key = asyncio.run(create_api_key(database_url, "dev"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True


@cli.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
) -> None:
    """Everything in one process tree: embedded databases, migrations, fakes, API, worker."""
    settings = get_settings()
    data_dir = Path(settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not port_is_free(host, port):
        err_console.print(f"[red]error:[/red] {host}:{port} is in use (another `notify dev`?)")
        raise typer.Exit(1)

    # Stop at exit only what this command started, not servers another one shares.
    started_postgres = not settings.database_url and not embedded.postgres_running(data_dir)
    started_redis = not settings.redis_url and not embedded.redis_running(data_dir)
    try:
        began = time.monotonic()
        with console.status("Starting PostgreSQL and Redis..."):
            database_url, redis_url = prepare_environment()
        embedded_names = [
            name for name, unset in (("PostgreSQL", not settings.database_url),
                                     ("Redis", not settings.redis_url)) if unset
        ]  # fmt: skip
        if embedded_names:
            console.print(
                f"Embedded {' and '.join(embedded_names)} ready in "
                f"{time.monotonic() - began:.1f}s ({data_dir})"
            )
        exit_code = _run_dev(host, port, data_dir, database_url, redis_url)
    except KeyboardInterrupt:  # Ctrl-C before the children were started
        exit_code = 130
    finally:
        if started_redis:
            embedded.stop_redis(data_dir)
        if started_postgres:
            embedded.stop_postgres(data_dir)
    console.print("Stopped.")
    raise typer.Exit(exit_code)


def _run_dev(host: str, port: int, data_dir: Path, database_url: str, redis_url: str) -> int:
    settings = get_settings()
    with console.status("Applying migrations..."):
        upgrade_head(database_url, configure_logging=False)
    api_key, key_created = _dev_api_key(data_dir, database_url)

    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    api_url = f"http://{display_host}:{port}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=settings.secret_key.get_secret_value(),
        PUBLIC_BASE_URL=settings.public_base_url or api_url,
        PYTHONUNBUFFERED="1",
    )
    if "log_json" not in settings.model_fields_set:
        env["LOG_JSON"] = "false"  # a person reads these logs, interleaved in one terminal
    children: list[tuple[str, list[str], str | None, str]] = []
    urls: list[tuple[str, str]] = []
    if not settings.imo_username:
        imo_port = embedded.free_port()
        imo_root = f"http://127.0.0.1:{imo_port}"
        env.update(
            IMO_BASE_URL=f"{imo_root}/api/simple",
            IMO_USERNAME=FAKE_IMO_USERNAME,
            IMO_PASSWORD=FAKE_IMO_PASSWORD,
        )
        children.append(
            (
                "fake-imo",
                notify_command("fake-imo", "--port", str(imo_port)),
                f"{imo_root}/_fake/stats",
                "magenta",
            )
        )
        urls.append(("Fake Imo", f"{imo_root}/api/simple  (stats: {imo_root}/_fake/stats)"))
    if not settings.twilio_account_sid:
        twilio_port = embedded.free_port()
        twilio_root = f"http://127.0.0.1:{twilio_port}"
        env.update(
            TWILIO_BASE_URL=twilio_root,
            TWILIO_ACCOUNT_SID=FAKE_TWILIO_ACCOUNT_SID,
            TWILIO_AUTH_TOKEN=FAKE_TWILIO_AUTH_TOKEN,
            TWILIO_SMS_FROM=FAKE_TWILIO_SMS_FROM,
        )
        children.append(
            (
                "fake-twilio",
                notify_command("fake-twilio", "--port", str(twilio_port)),
                f"{twilio_root}/_fake/stats",
                "yellow",
            )
        )
        urls.append(("Fake Twilio", f"{twilio_root}  (stats: {twilio_root}/_fake/stats)"))
    stack = DevStack(env)
    for child in children:
        stack.add(*child)
    stack.add(
        "api",
        notify_command("api", "--host", host, "--port", str(port)),
        f"{api_url}/healthz",
        "cyan",
    )
    stack.add("worker", notify_command("worker"), None, "green")

    def on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        stack.start()
        if stack.wait_ready():
            _print_banner(api_url, api_key, key_created, urls, data_dir)
        while not stack.stopping.is_set():
            dead = stack.dead_child()
            if dead is not None:
                assert dead.process is not None
                err_console.print(
                    f"[red]{dead.name} exited (code {dead.process.returncode}); "
                    "stopping the rest[/red]"
                )
                exit_code = 1
                break
            stack.stopping.wait(0.25)
    finally:
        console.print("Stopping...")
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code


def _print_banner(
    api_url: str, api_key: str, key_created: bool, urls: list[tuple[str, str]], data_dir: Path
) -> None:
    rows = [
        ("API docs", f"{api_url}/docs"),
        ("API key", f"{api_key}  ({'new, ' if key_created else ''}kept in {data_dir}/dev-api-key)"),
        ("Try it", f'curl -H "Authorization: Bearer {api_key}" {api_url}/v1/templates'),
        *urls,
        ("Data", f"{data_dir}  (delete it to start afresh)"),
    ]
    console.rule("[bold green]clinic-notify is running[/bold green]")
    for name, value in rows:
        # soft_wrap: never break the key or a URL, whatever the terminal's width.
        console.print(Text(f"  {name:<12} ", style="bold") + Text(value), soft_wrap=True)
    console.rule("Ctrl-C stops it")


if __name__ == "__main__":
    main()
