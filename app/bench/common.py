"""What every benchmark shares: a fresh database, the fakes and workers as processes,
set-based seeding, peak memory, and a table that puts each rate next to its baseline.

Benchmarks measure; they never assert. Rates are compared within one run (ratios), since
the machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app import embedded
from app.devtools.environment import notify_command, prepare_environment, upgrade_head
from app.devtools.supervisor import http_ok, spawn, stop_processes
from app.fakes.credentials import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_TWILIO_SMS_FROM,
    FAKE_WHATSAPP_ACCESS_TOKEN,
    FAKE_WHATSAPP_PHONE_NUMBER_ID,
)

console = Console(highlight=False, width=160)


@dataclass
class Result:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def show(self) -> None:
        """One table per set of columns (the measured rows, then e.g. their medians),
        so that no value shows under another row's column."""
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in self.rows:
            shapes.setdefault(tuple(row), []).append(row)
        for columns, rows in shapes.items() or {(): []}.items():
            table = Table(title=self.name)
            for column in columns:
                table.add_column(column, justify="right")
            for row in rows:
                table.add_row(*(_fmt(v) for v in row.values()))
            console.print(table)

    def write_json(self, path: Path | None, comparisons: Sequence[Result] = ()) -> None:
        """The rows (and any `compare` tables of them, by name) as JSON at `path`."""
        if path is not None:
            document: dict[str, Any] = {"benchmark": self.name, "rows": self.rows}
            if comparisons:
                document["comparisons"] = {c.name: c.rows for c in comparisons}
            path.write_text(json.dumps(document, indent=2))


def compare(
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    vary: str,
    figures: Sequence[str],
) -> Result:
    """Each configuration's (`keys`) median of `figures` over its runs, and its ratio to
    the configuration that differs only in `vary`, set to the first value `vary` took
    (e.g. PostgreSQL's CPU per message on 10,000,000 older rows / on an empty table).
    Keys that are the same in every row are left out of the table."""
    first = rows[0][vary]
    shown = [k for k in keys if k == vary or len({repr(row[k]) for row in rows}) > 1]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row[k]) for k in keys), []).append(row)
    medians = {
        group: {f: statistics.median(float(r[f]) for r in runs) for f in figures}
        for group, runs in groups.items()
    }
    position = list(keys).index(vary)
    result = Result(f"medians by {vary}, each next to {vary} = {first}")
    for group, runs in groups.items():
        reference = medians.get((*group[:position], repr(first), *group[position + 1 :]))
        row = {k: runs[0][k] for k in shown} | {"runs": len(runs)} | medians[group]
        for f in figures:
            ratio = medians[group][f] / reference[f] if reference and reference[f] else None
            row[f"{f} vs {first}"] = "-" if ratio is None else round(ratio, 3)
        result.add(**row)
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def database_url_of(name: str) -> str:
    """The URL of database `name` next to the configured (or embedded) one."""
    database_url, _ = prepare_environment()
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


async def fresh_database(name: str, template: str | None = None) -> str:
    """Drop and create database `name` next to the configured (or embedded) one; migrate.

    `template`: a copy of that database (file by file, not through the WAL: a copy of
    millions of rows takes the disk's time, not an INSERT's), e.g. a bench history
    (app/bench/history.py: `older_history`)."""
    database_url, _ = prepare_environment()
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        create = f'CREATE DATABASE "{name}"'
        if template is not None:
            create += f' TEMPLATE "{template}"'
            # PostgreSQL 15 copies through the WAL by default: gigabytes of it.
            if int(await connection.scalar(text("SHOW server_version_num")) or 0) >= 150000:
                create += " STRATEGY FILE_COPY"
        await connection.execute(text(create))
    await admin.dispose()
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade_head, url, configure_logging=False)
    return url


async def drop_database(name: str) -> None:
    """Drop database `name` next to the configured one (a copy of a history: gigabytes)."""
    database_url, _ = prepare_environment()
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def server_pid(database_url: str) -> int | None:
    """The PostgreSQL server process (postmaster) behind `database_url`, if it runs here."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            backend = await connection.scalar(text("SELECT pg_backend_pid()"))
    finally:
        await engine.dispose()
    try:
        server: int = psutil.Process(int(backend)).ppid()
    except (psutil.Error, TypeError, ValueError):
        return None
    return server


class PeakMemory:
    """Samples the RSS of a process (and its children) in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
                for child in self.process.children(recursive=True):
                    rss += child.memory_info().rss
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 1e6


class CpuSeconds:
    """CPU seconds (user + system) that named processes spend between `start()` and
    `stop()`: tells which process a figure is limited by. PostgreSQL backends are
    found by their process title, which names their database, under `server` (the
    postmaster: test suites elsewhere on the machine use the same database names);
    `left_out`: backends of the bench's own (its progress polls), counted apart as
    "postgresql (bench)", not as the service's."""

    def __init__(
        self,
        processes: list[tuple[str, int]],
        database: str | None = None,
        server: int | None = None,
        left_out: Collection[int] = (),
    ) -> None:
        self.processes = processes
        self.database = database
        self.server = server
        self.left_out = frozenset(left_out)
        self._before: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def _snapshot(self) -> dict[tuple[str, int], float]:
        pids = set(self.processes)
        for name, pid in self.processes:  # e.g. `notify api --workers N`'s processes
            with contextlib.suppress(psutil.Error):
                pids.update((name, c.pid) for c in psutil.Process(pid).children(recursive=True))
        if self.database:
            for process in psutil.process_iter(["cmdline", "ppid"]):
                title = " ".join(process.info["cmdline"] or [])
                ours = self.server is None or process.info["ppid"] == self.server
                if ours and title.startswith("postgres:") and f" {self.database} " in f"{title} ":
                    bench = process.pid in self.left_out
                    pids.add(("postgresql (bench)" if bench else "postgresql", process.pid))
        cpu: dict[tuple[str, int], float] = {}
        for name, pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                cpu[(name, pid)] = times.user + times.system
        return cpu

    def start(self) -> None:
        self._before = {pid: seconds for (_, pid), seconds in self._snapshot().items()}

    def stop(self) -> dict[str, float]:
        self.seconds = {}
        for (name, pid), seconds in self._snapshot().items():
            used = seconds - self._before.get(pid, 0.0)
            self.seconds[name] = self.seconds.get(name, 0.0) + used
        return self.seconds


@dataclass
class Processes:
    env: dict[str, str]
    workdir: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:  # the child keeps its copy
            child = spawn(
                notify_command(*args),
                self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.children.append(child)
        return child

    # Generous: on a shared, loaded machine an API process can take a minute to import.
    def wait_http(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not http_ok(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up; logs in {self.workdir}")
            time.sleep(0.05)

    def stop(self, children: list[subprocess.Popen[bytes]] | None = None) -> None:
        targets = children if children is not None else self.children
        stop_processes(targets)
        for child in targets:
            if child in self.children:
                self.children.remove(child)


async def start_workers(
    processes: Processes, count: int, within: float = 60
) -> list[subprocess.Popen[bytes]]:
    """`count` workers (`worker-{i}`), returned once each has said it is ready."""
    ready = [processes.workdir / f"worker-{i}.ready" for i in range(count)]
    children = [
        processes.start(f"worker-{i}", "worker", "--ready-file", str(path))
        for i, path in enumerate(ready)
    ]
    deadline = time.monotonic() + within
    while not all(path.exists() for path in ready):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start; logs in {processes.workdir}")
        await asyncio.sleep(0.05)
    return children


@contextmanager
def fakes_and_env(database_url: str, redis_url: str, **settings: str) -> Iterator[Processes]:
    """Fake Imo, Twilio and WhatsApp (callbacks off) on free ports, and the environment
    for workers/API pointing at them, unthrottled, with the window always open."""
    workdir = Path(tempfile.mkdtemp(prefix="clinic-notify-bench-"))
    imo_port, twilio_port = embedded.free_port(), embedded.free_port()
    whatsapp_port = embedded.free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "FAKE_PROVIDERS": "true",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "IMO_BASE_URL": f"http://127.0.0.1:{imo_port}/api/simple",
        "IMO_USERNAME": FAKE_IMO_USERNAME,
        "IMO_PASSWORD": FAKE_IMO_PASSWORD,
        "TWILIO_BASE_URL": f"http://127.0.0.1:{twilio_port}",
        "TWILIO_ACCOUNT_SID": FAKE_TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": FAKE_TWILIO_AUTH_TOKEN,
        "TWILIO_SMS_FROM": FAKE_TWILIO_SMS_FROM,
        "IMO_RATE_LIMIT_PER_SECOND": "1000000",
        "TWILIO_RATE_LIMIT_PER_SECOND": "1000000",
        "WHATSAPP_BASE_URL": f"http://127.0.0.1:{whatsapp_port}",
        "WHATSAPP_PHONE_NUMBER_ID": FAKE_WHATSAPP_PHONE_NUMBER_ID,
        "WHATSAPP_ACCESS_TOKEN": FAKE_WHATSAPP_ACCESS_TOKEN,
        "WHATSAPP_RATE_LIMIT_PER_SECOND": "1000000",
        "MESSAGING_WINDOW_START": "00:00",
        "MESSAGING_WINDOW_END": "23:59:59.999999",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(workdir / "data"),
        **settings,
    }
    processes = Processes(env, workdir)
    try:
        off = ["--set", "callbacks_enabled=false"]
        processes.start("fake-imo", "fake-imo", "--port", str(imo_port), *off)
        processes.start("fake-twilio", "fake-twilio", "--port", str(twilio_port), *off)
        processes.start("fake-whatsapp", "fake-whatsapp", "--port", str(whatsapp_port), *off)
        for port in (imo_port, twilio_port, whatsapp_port):
            processes.wait_http(f"http://127.0.0.1:{port}/_fake/stats")
        yield processes
    finally:
        processes.stop()


async def run_module(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m module args` (our own load generators) in its own process; parse the
    one JSON line it prints. Off the event loop, which keeps polling meanwhile."""
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", module, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result
