"""`notify dev`: embedded databases, migrations, the fakes, the API and a worker in one
process tree, started together and stopped together."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from app import embedded
from app.auth import service as auth_service
from app.config import get_settings
from app.devtools.console import console, err_console
from app.devtools.environment import (
    checked_settings,
    data_dir_or_exit,
    notify_command,
    prepare_environment,
    upgrade_head,
    write_dev_env,
)
from app.devtools.supervisor import http_ok, port_is_free, spawn, stop_processes
from app.errors import Conflict
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
from app.gateways import service as gateway_service
from app.operators import service as operator_service

# The settings `notify dev` gives its children that other `notify` commands need too.
_SHARED = (
    "PUBLIC_BASE_URL",
    "FAKE_PROVIDERS",
    "IMO_BASE_URL",
    "IMO_USERNAME",
    "IMO_PASSWORD",
    "TWILIO_BASE_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_SMS_FROM",
    "WHATSAPP_BASE_URL",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_TWILIO_FROM",
)


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
            pending = [c for c in pending if not _ready(c.ready_url or "")]
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


def _ready(url: str) -> bool:
    """`http://...`: answers 2xx; `tcp://HOST:PORT` (a server without HTTP, such as the
    SMTP receiver): accepts a connection."""
    if url.startswith("tcp://"):
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False
    return http_ok(url, timeout=0.5)


def _dev_api_key(data_dir: Path, database_url: str) -> tuple[str, bool]:
    """The development key kept in `.data/dev-api-key`; (key, created now)."""
    path = data_dir / "dev-api-key"
    if path.exists():
        key = path.read_text().strip()
        if key and asyncio.run(auth_service.api_key_is_live(database_url, key)):
            return key, False
    _, key = asyncio.run(auth_service.issue_api_key(database_url, "dev"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True


DEV_OPERATOR = "dev@localhost.localdomain"
DEV_GATEWAY = "dev-phone"
# In `notify dev`, unless CHANNEL_CHAINS is set: Kenya's patients go through the fake
# gateway phone first (CHT's own home ground), Twilio after it.
DEV_GATEWAY_COUNTRY = "KE"
FAKE_GATEWAY_INTERVAL = 2.0


def _kept_login(
    path: Path,
    works: Callable[[str, str], Coroutine[Any, Any, bool]],
    issue: Callable[[str], Coroutine[Any, Any, str]],
    names: tuple[str, Callable[[], str]],
) -> tuple[str, str]:
    """A development login kept in `path` as "NAME SECRET"; (name, secret). Issued again
    when the file is gone or its login no longer works: under `names[0]`, or under a
    fresh name from `names[1]` when that one is taken."""
    if path.exists():
        name, _, secret = path.read_text().strip().partition(" ")
        if name and secret and asyncio.run(works(name, secret)):
            return name, secret
    name = names[0]
    try:
        secret = asyncio.run(issue(name))
    except Conflict:
        name = names[1]()
        secret = asyncio.run(issue(name))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{name} {secret}\n")
    return name, secret


def _dev_gateway(data_dir: Path, database_url: str) -> tuple[str, str]:
    """The development gateway phone kept in `.data/dev-gateway`; (name, secret). It
    serves every country (no country of its own)."""

    async def issue(name: str) -> str:
        _, secret = await gateway_service.issue_gateway(database_url, name, None, None)
        return secret

    return _kept_login(
        data_dir / "dev-gateway",
        lambda name, secret: gateway_service.credentials_work(database_url, name, secret),
        issue,
        (DEV_GATEWAY, lambda: f"{DEV_GATEWAY}-{secrets.token_hex(3)}"),
    )


def _dev_operator(data_dir: Path, database_url: str) -> tuple[str, str]:
    """The development dashboard admin kept in `.data/dev-operator`; (email, password)."""
    return _kept_login(
        data_dir / "dev-operator",
        lambda email, password: operator_service.login_works(database_url, email, password),
        lambda email: operator_service.issue_operator(database_url, email, "admin"),
        (DEV_OPERATOR, lambda: f"dev-{secrets.token_hex(3)}@localhost.localdomain"),
    )


def run(host: str, port: int) -> int:
    """Run the stack until Ctrl-C, SIGTERM or a child's exit; returns the exit code."""
    settings = checked_settings()
    data_dir = data_dir_or_exit(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not port_is_free(host, port):
        err_console.print(f"[red]error:[/red] {host}:{port} is in use (another `notify dev`?)")
        return 1

    # Stop at exit only what this command started, not servers another one shares.
    started_postgres = not settings.database_url and not embedded.postgres_running(data_dir)
    started_redis = not settings.redis_url and not embedded.redis_running(data_dir)
    try:
        began = time.monotonic()
        with console.status("Starting PostgreSQL and Redis..."):
            database_url, redis_url = prepare_environment(dev_env=False)
        embedded_names = [
            name for name, unset in (("PostgreSQL", not settings.database_url),
                                     ("Redis", not settings.redis_url)) if unset
        ]  # fmt: skip
        if embedded_names:
            console.print(
                f"Embedded {' and '.join(embedded_names)} ready in "
                f"{time.monotonic() - began:.1f}s ({data_dir})"
            )
        exit_code = _run_children(host, port, data_dir, database_url, redis_url)
    except KeyboardInterrupt:  # Ctrl-C before the children were started
        exit_code = 130
    finally:
        if started_redis:
            embedded.stop_redis(data_dir)
        if started_postgres:
            embedded.stop_postgres(data_dir)
    console.print("Stopped.")
    return exit_code


def _run_children(host: str, port: int, data_dir: Path, database_url: str, redis_url: str) -> int:
    settings = get_settings()
    with console.status("Applying migrations..."):
        upgrade_head(database_url, configure_logging=False)
    api_key, key_created = _dev_api_key(data_dir, database_url)
    operator = _dev_operator(data_dir, database_url)
    gateway_name, gateway_secret = _dev_gateway(data_dir, database_url)

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
    if not settings.whatsapp_configured and settings.whatsapp_provider == "cloud":
        whatsapp_port = embedded.free_port()
        whatsapp_root = f"http://127.0.0.1:{whatsapp_port}"
        webhook_url = f"{env['PUBLIC_BASE_URL']}/callbacks/whatsapp"
        env.update(
            WHATSAPP_BASE_URL=whatsapp_root,
            WHATSAPP_PHONE_NUMBER_ID=FAKE_WHATSAPP_PHONE_NUMBER_ID,
            WHATSAPP_ACCESS_TOKEN=FAKE_WHATSAPP_ACCESS_TOKEN,
            WHATSAPP_APP_SECRET=FAKE_WHATSAPP_APP_SECRET,
            WHATSAPP_VERIFY_TOKEN=FAKE_WHATSAPP_VERIFY_TOKEN,
        )
        children.append(
            (
                "fake-whatsapp",
                notify_command(
                    "fake-whatsapp",
                    "--port",
                    str(whatsapp_port),
                    "--set",
                    f"webhook_url={webhook_url}",
                ),
                f"{whatsapp_root}/_fake/stats",
                "blue",
            )
        )
        urls.append(("Fake WhatsApp", f"{whatsapp_root}  (stats: {whatsapp_root}/_fake/stats)"))
    elif not settings.whatsapp_configured and not settings.twilio_account_sid:
        # WhatsApp through the fake Twilio: it speaks both.
        env.update(WHATSAPP_TWILIO_FROM=FAKE_TWILIO_SMS_FROM)
    if not settings.smtp_host:
        # The embedded SMTP server: no mail leaves the laptop; it is kept in .data/mail.
        # Beside it, the SMTP receiver of replies and bounces (`notify smtp-inbound`),
        # where the fake mail sends a reply or a bounce of a kept message when asked.
        smtp_port, mail_port = embedded.free_port(), embedded.free_port()
        inbound_port = embedded.free_port()
        mail_root = f"http://127.0.0.1:{mail_port}"
        env.update(
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(smtp_port),
            SMTP_SECURITY="none",
            SMTP_USERNAME="",
            EMAIL_FROM=settings.email_from or "Clinic <clinic@notify.localhost>",
        )
        children.append(
            (
                "fake-mail",
                notify_command(
                    "fake-mail",
                    "--smtp-port",
                    str(smtp_port),
                    "--port",
                    str(mail_port),
                    "--folder",
                    str(data_dir / "mail"),
                    "--inbound-smtp",
                    f"127.0.0.1:{inbound_port}",
                ),
                f"{mail_root}/_fake/stats",
                "cyan",
            )
        )
        children.append(
            (
                "smtp-in",
                notify_command("smtp-inbound", "--host", "127.0.0.1", "--port", str(inbound_port)),
                f"tcp://127.0.0.1:{inbound_port}",
                "bright_cyan",
            )
        )
        urls.append(("Fake mail", f"{mail_root}/_fake/mail  (SMTP on 127.0.0.1:{smtp_port})"))
        urls.append(
            (
                "Inbound mail",
                f"smtp://127.0.0.1:{inbound_port}  (replies and bounces to "
                f"@{settings.email_inbound_domain}; try one: POST "
                f"{mail_root}/_fake/mail/ID/reply, docs/email.md)",
            )
        )
    # Anyone may be messaged only when every provider is a fake; with one real provider
    # configured, ALLOWED_RECIPIENTS holds for all of them.
    every_fake = not (
        settings.imo_username
        or settings.twilio_account_sid
        or settings.whatsapp_configured
        or settings.smtp_host
    )
    env["FAKE_PROVIDERS"] = "true" if every_fake else "false"
    if not every_fake and not settings.allowed_recipients:
        console.print(
            "[yellow]A real provider is configured and ALLOWED_RECIPIENTS is empty: "
            "nobody will be messaged.[/yellow]"
        )
    # A fake cht-gateway phone polls the API as the Android app does; its secret goes by
    # the environment, not the command line.
    env["FAKE_GATEWAY_PASSWORD"] = gateway_secret
    gateway_chains = ""
    if "channel_chains" not in settings.model_fields_set:
        chains = {**settings.channel_chains, DEV_GATEWAY_COUNTRY: ["gateway", "sms"]}
        env["CHANNEL_CHAINS"] = json.dumps(chains)
        gateway_chains = f"patients in {DEV_GATEWAY_COUNTRY} go through it first"
    elif settings.chains_use("gateway"):
        gateway_chains = "CHANNEL_CHAINS sends through it"
    else:
        gateway_chains = "put `gateway` in CHANNEL_CHAINS to send through it"
    # Added last: stopped first, before the API it polls.
    fake_gateway = (
        "fake-gateway",
        notify_command(
            "fake-gateway",
            "--url",
            f"{api_url}/gateway/api/sms",
            "--user",
            gateway_name,
            "--interval",
            f"{FAKE_GATEWAY_INTERVAL:g}",
        ),
        None,
        "bright_magenta",
    )
    urls.append(
        (
            "Fake gateway",
            f"{gateway_name} polls every {FAKE_GATEWAY_INTERVAL:g} s ({gateway_chains}; "
            f"{data_dir}/dev-gateway)",
        )
    )
    # What another terminal's `notify invite` needs to reach this stack's fakes and API.
    shared = {key: env[key] for key in _SHARED if key in env and key not in os.environ}
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
    stack.add(*fake_gateway)

    def on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    dev_env = write_dev_env(data_dir, shared)
    try:
        stack.start()
        if stack.wait_ready():
            _print_banner(api_url, api_key, key_created, operator, urls, data_dir)
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
        # The children first, whatever printing does: they need the embedded servers
        # that `run` stops after this.
        try:
            console.print("Stopping...")
        finally:
            stack.stop()
            dev_env.unlink(missing_ok=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return exit_code


def _print_banner(
    api_url: str,
    api_key: str,
    key_created: bool,
    operator: tuple[str, str],
    urls: list[tuple[str, str]],
    data_dir: Path,
) -> None:
    rows = [
        ("API docs", f"{api_url}/docs"),
        ("Dashboard", f"{api_url}/dashboard/"),
        ("Log in as", f"{operator[0]}  password {operator[1]}  (admin; {data_dir}/dev-operator)"),
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
