"""`notify bench ...`: the benchmarks. Each prints a table; `--json PATH` keeps the rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_cli = typer.Typer(help="Benchmarks (see docs/benchmarks.md).", no_args_is_help=True)

JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the rows here.")]
CountTriggers = Annotated[
    list[str],
    typer.Option(
        help="on/off: the dashboard's counting triggers; `--count-triggers on"
        " --count-triggers off` measures what they cost, one row each, in one run."
    ),
]


History = Annotated[
    list[int],
    typer.Option(
        help="Older notifications (and their attempts: a year of them, all final) already"
        " in the tables; `--history 0 --history 10000000` compares an empty table with"
        " 10 M older rows in one run, side by side."
    ),
]
ReuseHistory = Annotated[
    bool,
    typer.Option(
        help="Keep a history an earlier run seeded (same size) instead of seeding it"
        " again (10 M rows take a quarter of an hour or more)."
    ),
]
Repeat = Annotated[
    int, typer.Option(min=1, help="Runs of every row, interleaved; a table of medians.")
]


def _on_off(values: list[str]) -> list[bool]:
    if bad := [value for value in values if value not in ("on", "off")]:
        raise typer.BadParameter(f"--count-triggers takes on or off, not {bad[0]!r}")
    return [value == "on" for value in values]


@bench_cli.command("dispatch")
def dispatch(
    reminders: Annotated[list[int], typer.Option("--reminders", "-n")] = [100_000],  # noqa: B006
    workers: Annotated[list[int], typer.Option("--workers", "-w")] = [1],  # noqa: B006
    concurrency: Annotated[int, typer.Option(help="In-flight sends per worker.")] = 200,
    batch: Annotated[int, typer.Option(help="Notifications claimed per batch.")] = 500,
    measured: Annotated[
        int | None,
        typer.Option(help="Time only the first M sends of the N due (memory on a big table)."),
    ] = None,
    mix: Annotated[
        list[str],
        typer.Option(help="imo-sms (half each), sms or whatsapp (all of them); one row each."),
    ] = ["imo-sms"],  # noqa: B006
    count_triggers: CountTriggers = ["on"],  # noqa: B006
    webhooks: Annotated[
        list[str],
        typer.Option(
            help="none, or sink: an endpoint (the webhook sink) wants every notification.* "
            "event; `--webhooks none --webhooks sink` compares them in one run."
        ),
    ] = ["none"],  # noqa: B006
    history: History = [0],  # noqa: B006
    reuse_history: ReuseHistory = False,
    repeat: Repeat = 1,
    ids: Annotated[
        list[str],
        typer.Option(
            help="The due reminders' ids: time-ordered (uuid v7, what the service makes) or"
            " random (uuid v4, as before 20261206); `--ids random --ids time-ordered`"
            " compares them in one run."
        ),
    ] = ["time-ordered"],  # noqa: B006
    json_path: JsonOption = None,
) -> None:
    """N due reminders (half Imo, half SMS by default) sent by real workers vs a bare
    aiohttp loop. `--mix sms --mix whatsapp` compares the two channels in one run,
    `-w 1 -w 4` one worker with four (PostgreSQL's CPU per message of each, and 4 / 1),
    `--history 0 --history 10000000` an empty table with a big one."""
    from app.bench import dispatch as bench_dispatch
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_dispatch.run(
        reminders,
        workers,
        concurrency,
        batch,
        json_path,
        measured,
        mix,
        _on_off(count_triggers),
        [_webhooks_variant(variant) for variant in webhooks],
        history,
        reuse_history,
        repeat,
        ids,
    )


@bench_cli.command("email")
def email(
    emails: Annotated[int, typer.Option("--emails", "-n")] = 20_000,
    pool: Annotated[list[int], typer.Option("--pool", help="SMTP_POOL_SIZE; one row each.")] = [  # noqa: B006
        4,
        8,
    ],
    repeats: Annotated[int, typer.Option(min=1, help="Runs per row; the median is shown.")] = 3,
    json_path: JsonOption = None,
) -> None:
    """N emails from the email channel of one process to the embedded SMTP server (another
    process) per pool size, vs a bare aiosmtplib loop; the sender's memory."""
    from app.bench import email as bench_email

    bench_email.run(emails, pool, repeats, json_path)


def _webhooks_variant(variant: str) -> bool:
    if variant not in ("none", "sink"):
        raise typer.BadParameter(f"--webhooks: none or sink, not {variant!r}")
    return variant == "sink"


@bench_cli.command("broadcast")
def broadcast(
    patients: Annotated[int, typer.Option("--patients", "-n")] = 1_000_000,
    chunk: Annotated[int, typer.Option(help="BROADCAST_CHUNK_SIZE of the worker.")] = 5_000,
    pages: Annotated[int, typer.Option(help="History pages to follow by cursor.")] = 500,
    repeat: Annotated[
        int, typer.Option(help="Broadcasts, each on an emptied table; medians of them.")
    ] = 1,
    count_triggers: CountTriggers = ["on"],  # noqa: B006
    lanes: Annotated[
        list[int] | None,
        typer.Option(
            min=1,
            max=16,
            help="BROADCAST_FAN_OUT_LANES of the worker (default: the setting's); "
            "`--lanes 1 --lanes 2` compares them in one run, on the same patients.",
        ),
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """A broadcast to an N-patient filter group fanned out by a worker, its progress and
    the API's memory meanwhile, then the group's history pages on that table."""
    from app.bench import broadcast as bench_broadcast
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_broadcast.run(
        patients, chunk, pages, repeat, json_path, _on_off(count_triggers), lanes or None
    )


@bench_cli.command("fanout")
def fanout(
    patients: Annotated[int, typer.Option("--patients", "-n")] = 1_000_000,
    chunk: Annotated[int, typer.Option(help="Members per chunk.")] = 5_000,
    rounds: Annotated[int, typer.Option(help="Chunks timed per variant.")] = 9,
    reuse: Annotated[
        bool, typer.Option(help="Keep the database of the last run if it has N patients.")
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """Where a broadcast chunk's time goes: the chunk statement timed as it is and with
    each cost (a trigger, the foreign key, each index) taken away, in one run."""
    from app.bench import fanout as bench_fanout
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_fanout.run(patients, chunk, rounds, reuse, json_path)


@bench_cli.command("history")
def history(
    notifications: Annotated[int, typer.Option("--notifications", "-n")] = 10_000_000,
    requests: Annotated[int, typer.Option(help="Pages read of each kind.")] = 300,
    json_path: JsonOption = None,
) -> None:
    """Message history pages (patient, group, event, staff; first, deep, filtered) on a
    table of N notifications, through the API in process: p50 and p99 of each."""
    from app.bench import history as bench_history
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_history.run(notifications, requests, json_path)


@bench_cli.command("switch")
def switch(
    reminders: Annotated[list[int], typer.Option("--reminders", "-n")] = [10_000],  # noqa: B006
    workers: Annotated[list[int], typer.Option("--workers", "-w")] = [2],  # noqa: B006
    batch: Annotated[int, typer.Option(help="Notifications claimed per batch.")] = 500,
    pause_at: Annotated[
        float, typer.Option(help="Pause once this share of the reminders went out.")
    ] = 0.3,
    json_path: JsonOption = None,
) -> None:
    """Pause country=IN mid-send: sends after the pause, then resume: none lost or twice."""
    from app.bench import switch as bench_switch
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_switch.run(reminders, workers, batch, pause_at, json_path)


@bench_cli.command("webhooks")
def webhooks(
    events: Annotated[int, typer.Option("--events", "-n")] = 10_000,
    fail_rate: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.2,
    batch: Annotated[int, typer.Option(help="Deliveries claimed per batch.")] = 500,
    json_path: JsonOption = None,
) -> None:
    """N events delivered by one sender to the webhook sink (another process) failing a
    share of them: the rate, the sender's memory, each id once at the sink."""
    from app.bench import webhooks as bench_webhooks
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_webhooks.run(events, fail_rate, batch, json_path)


@bench_cli.command("ratelimit")
def ratelimit(
    rate: Annotated[float, typer.Option(help="The limit, per second.")] = 500.0,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Processes.")] = 4,
    seconds: Annotated[float, typer.Option(help="How long each process asks.")] = 3.0,
    batch: Annotated[int, typer.Option(help="n per acquire(n).")] = 1,
    concurrency: Annotated[int, typer.Option(help="Tasks per process.")] = 1,
    redis_url: Annotated[
        str, typer.Option(help="Redis to use (default REDIS_URL; else a throwaway server).")
    ] = "",
) -> None:
    """The Redis rate limiter shared by W processes: the aggregate rate, the most grants in
    any one-second window, Redis round trips per second."""
    import os

    from app.bench import ratelimit as bench_ratelimit

    url = redis_url or os.environ.get("REDIS_URL", "")
    bench_ratelimit.show(bench_ratelimit.measure(url, rate, workers, seconds, batch, concurrency))


@bench_cli.command("invitations")
def invitations(
    patients: Annotated[list[int], typer.Option("--patients", "-n")] = [100_000],  # noqa: B006
    concurrency: Annotated[int, typer.Option(help="Invitations in flight.")] = 100,
    batch: Annotated[int, typer.Option(help="Patients claimed per batch.")] = 1000,
    rate: Annotated[
        float | None,
        typer.Option(help="Instead: W workers under this Imo limit; the rate the fake sees."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="With --rate.")] = 4,
    seconds: Annotated[float, typer.Option(help="With --rate: patients = rate x this.")] = 20.0,
    json_path: JsonOption = None,
) -> None:
    """An unthrottled Imo invitation round vs a bare aiohttp loop; or, with --rate, the
    aggregate rate of several workers sharing one limit."""
    from app.bench import invitations as bench_invitations
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_invitations.run(
        patients, concurrency, batch, json_path, rate=rate, workers=workers, seconds=seconds
    )


@bench_cli.command("callbacks")
def callbacks(
    callbacks: Annotated[list[int], typer.Option("--callbacks", "-n")] = [20_000],  # noqa: B006
    concurrency: Annotated[int, typer.Option(help="Connections of the load generator.")] = 64,
    api_workers: Annotated[
        list[int], typer.Option("--api-workers", help="API processes (`notify api --workers`).")
    ] = [1],  # noqa: B006
    webhooks: Annotated[
        list[str],
        typer.Option(
            help="none, or sink: an endpoint wants every notification.* event (recorded "
            "with each report; no worker runs to deliver them)."
        ),
    ] = ["none"],  # noqa: B006
    history: History = [0],  # noqa: B006
    reuse_history: ReuseHistory = False,
    repeat: Repeat = 1,
    json_path: JsonOption = None,
) -> None:
    """Imo read receipts and Twilio statuses at the API: rate, latency, none lost.
    `--history 0 --history 10000000`: on an empty table and on a big one, side by side."""
    from app.bench import callbacks as bench_callbacks
    from app.devtools.environment import prepare_environment

    prepare_environment()
    subscribed = [_webhooks_variant(variant) for variant in webhooks]
    bench_callbacks.run(
        callbacks,
        concurrency,
        json_path,
        api_workers,
        subscribed,
        history,
        reuse_history,
        repeat,
    )


@bench_cli.command("gateway")
def gateway(
    notifications: Annotated[list[int], typer.Option("--notifications", "-n")] = [1_000_000],  # noqa: B006
    polls: Annotated[int, typer.Option(help="Polls measured per round.")] = 300,
    rounds: Annotated[int, typer.Option(help="Rounds after one seeding; their median.")] = 3,
    reuse: Annotated[
        bool, typer.Option(help="Measure on the table a previous run seeded (no seeding).")
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """A cht-gateway poll (10 incoming, 20 updates) with a full table: latency."""
    from app.bench import gateway as bench_gateway
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_gateway.run(notifications, polls, rounds, json_path, reuse)


@bench_cli.command("schedule")
def schedule(
    notifications: Annotated[list[int], typer.Option("--notifications", "-n")] = [10_000],  # noqa: B006
    concurrency: Annotated[int, typer.Option(help="Connections of the load generator.")] = 32,
    batch: Annotated[int, typer.Option(help="Patients per batch request.")] = 1000,
    json_path: JsonOption = None,
) -> None:
    """Patients (batch) and notifications (one by one) created through the API."""
    from app.bench import schedule as bench_schedule
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_schedule.run(notifications, concurrency, batch, json_path)


@bench_cli.command("experiments")
def experiments(
    memberships: Annotated[list[int], typer.Option("--memberships", "-n")] = [1_000_000],  # noqa: B006
    repeats: Annotated[int, typer.Option(help="Times the results are computed.")] = 5,
    explain: Annotated[
        bool, typer.Option(help="Also print EXPLAIN ANALYZE of each query.")
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """An experiment's results (and its per-patient CSV rows) on N memberships."""
    from app.bench import experiments as bench_experiments
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_experiments.run(memberships, repeats, json_path, explain=explain)


@bench_cli.command("dashboard")
def dashboard(
    notifications: Annotated[list[int], typer.Option("--notifications", "-n")] = [10_000_000],  # noqa: B006
    repeats: Annotated[int, typer.Option(help="Requests per page.")] = 40,
    pages: Annotated[
        bool,
        typer.Option(
            help="Also the pages that read rows (patient lookup and page, gateways, "
            "webhooks) on N seeded notifications and --deliveries webhook deliveries: "
            "minutes of seeding at 10,000,000 (see --reuse)."
        ),
    ] = False,
    deliveries: Annotated[
        int, typer.Option(help="With --pages: webhook deliveries seeded.")
    ] = 1_000_000,
    reuse: Annotated[
        bool,
        typer.Option(
            help="Measure on the database a previous run seeded with the same N (and "
            "deliveries), migrated to head; seed it only if there is none."
        ),
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """The dashboard's pages (p50/p95) on the counts of N notifications over 90 days, and
    with --pages those that read rows."""
    from app.bench import dashboard as bench_dashboard
    from app.devtools.environment import prepare_environment

    prepare_environment()
    bench_dashboard.run(
        notifications, repeats, json_path, pages=pages, deliveries=deliveries, reuse=reuse
    )
