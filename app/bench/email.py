"""`notify bench email`: the email channel of one worker process sending N emails to the
embedded SMTP server (`notify fake-mail`, another process, keeping each message in its
folder), per SMTP pool size, against a bare aiosmtplib loop over as many connections
sending one pre-built message. Memory: the sender's RSS after the first tenth and at the
end (flat: the difference stays small whatever N is).

The channel's figure is what a worker's send path costs beyond PostgreSQL: composing
the MIME message (text and HTML), the pool, SMTP's round trips. `notify bench dispatch`
measures the database side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiosmtplib
import psutil

from app.bench.common import Result, console
from app.channels.base import OutgoingMessage
from app.channels.email import EmailChannel, SmtpConfig, compose, new_message_id
from app.devtools.environment import notify_command
from app.devtools.supervisor import http_ok, spawn, stop_processes
from app.embedded import free_port

SENDER = "Dhaka Clinic <clinic@notify.localhost>"
TEXT = (
    "Dear Patient {i},\nyour next visit to Dhaka Medical is on 2026-12-01 at 10:00.\n\n"
    "Please bring your card. <Reply> to this email if you cannot come & we will call you."
)


def message(i: int) -> OutgoingMessage:
    return OutgoingMessage(
        phone_e164="",
        email=f"patient{i}@mail.example.org",
        text=TEXT.format(i=i),
        locale="en",
        title="Appointment Reminder",
        callback_url="",
        recipient_name=f"Patient {i}",
        reference=str(i),
    )


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 1e6


async def run_channel(port: int, n: int, pool: int) -> dict[str, float]:
    channel = EmailChannel(
        SmtpConfig(
            host="127.0.0.1",
            port=port,
            security="none",
            username="",
            password="",
            sender=SENDER,
            pool_size=pool,
            messages_per_connection=0,
        )
    )
    counter = iter(range(n))
    early_rss = 0.0
    failures = 0

    async def sender() -> None:
        nonlocal early_rss, failures
        for i in counter:
            try:
                await channel.send(message(i))
            except Exception:
                failures += 1
            if i == n // 10:
                early_rss = rss_mb()

    # As many senders as connections, and a few more waiting: a worker's dispatcher keeps
    # the pool busy the same way.
    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(pool * 2)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await channel.close()
    return {
        "rate": n / seconds,
        "cpu_us": cpu / n * 1e6,
        "early_rss": early_rss,
        "end_rss": rss_mb(),
        "failures": failures,
    }


async def run_bare(port: int, n: int, pool: int) -> float:
    """aiosmtplib over `pool` connections sending one message built once: the ceiling."""
    data = compose(message(0), sender=SENDER, message_id=new_message_id("clinic@notify.localhost"))
    counter = iter(range(n))

    async def connection() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for _ in counter:
            await smtp.sendmail("clinic@notify.localhost", ["patient0@mail.example.org"], data)
        await smtp.quit()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(pool)))
    return n / (time.perf_counter() - t0)


def run(emails: int, pools: list[int], repeats: int, json_path: Path | None) -> Result:
    result = Result(f"email: {emails:,} emails per run to the embedded SMTP server")
    with tempfile.TemporaryDirectory(prefix="bench-email-") as folder:
        smtp_port, http_port = free_port(), free_port()
        server = spawn(
            notify_command(
                "fake-mail",
                "--smtp-port",
                str(smtp_port),
                "--port",
                str(http_port),
                "--folder",
                str(Path(folder) / "mail"),
                "--keep",
                "1000",
            ),
            dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not http_ok(f"http://127.0.0.1:{http_port}/_fake/stats"):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the embedded SMTP server did not start")
                time.sleep(0.1)
            server_cpu = psutil.Process(server.pid)
            for pool in pools:
                rates, bare_rates, growth, ends, cpus, failures = [], [], [], [], [], 0.0
                cpu_before = server_cpu.cpu_times()
                for _ in range(repeats):
                    row = asyncio.run(run_channel(smtp_port, emails, pool))
                    rates.append(row["rate"])
                    cpus.append(row["cpu_us"])
                    growth.append(row["end_rss"] - row["early_rss"])
                    ends.append(row["end_rss"])
                    failures += row["failures"]
                    bare_rates.append(asyncio.run(run_bare(smtp_port, emails, pool)))
                cpu_after = server_cpu.cpu_times()
                server_seconds = (cpu_after.user + cpu_after.system) - (
                    cpu_before.user + cpu_before.system
                )
                rate = statistics.median(rates)
                bare = statistics.median(bare_rates)
                result.add(
                    pool=pool,
                    runs=repeats,
                    **{
                        "emails/s (median)": rate,
                        "min": min(rates),
                        "max": max(rates),
                        "bare aiosmtplib/s": bare,
                        "ratio": rate / bare,
                        # CPU of the sending process per email: what bounds a worker
                        # with a core of its own, whatever the machine's load.
                        "sender us/email": statistics.median(cpus),
                        "RSS MB at end": max(ends),
                        "RSS growth MB (10%->end)": max(growth),
                        "server us/email": server_seconds / (emails * repeats * 2) * 1e6,
                        "failures": int(failures),
                    },
                )
                console.print(f"pool {pool}: {rate:,.0f} emails/s (bare {bare:,.0f}/s)")
        finally:
            with contextlib.suppress(Exception):
                stop_processes([server], 10.0)
    result.show()
    result.write_json(json_path)
    return result
