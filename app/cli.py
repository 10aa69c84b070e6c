"""The `notify` command: runs each part of the service, or all of them with `notify dev`.

Without `DATABASE_URL` / `REDIS_URL` every command that needs them uses the embedded
PostgreSQL and Redis of the data folder (`DATA_DIR`, default `.data`), started on demand
and shared by every `notify` process using that folder.

Only the commands live here; what they share is in `app.devtools`. More commands plug
in here: `cli.command("name")(function)` or `cli.add_typer(sub_app, name="name")`.
Import heavy modules inside the command function, so that `notify --help` and the other
commands stay fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from app.bench.cli import bench_cli
from app.config import get_settings
from app.devtools.console import console, err_console
from app.devtools.environment import (
    parse_overrides,
    prepare_environment,
    require_migrated,
    upgrade_head,
)
from app.event_loop import new_event_loop

cli = typer.Typer(
    name="notify",
    help="clinic-notify: patient reminders over Imo, WhatsApp and SMS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
api_keys_cli = typer.Typer(help="Manage the clinic system's API keys.", no_args_is_help=True)
experiments_cli = typer.Typer(help="A/B experiments of reminder plans.", no_args_is_help=True)
operators_cli = typer.Typer(help="Manage the dashboard's operators.", no_args_is_help=True)
cli.add_typer(api_keys_cli, name="api-keys")
gateways_cli = typer.Typer(help="Gateway phones (cht-gateway) that send SMS from their SIM.")
cli.add_typer(gateways_cli, name="gateways")
cli.add_typer(bench_cli, name="bench")
cli.add_typer(experiments_cli, name="experiments")
cli.add_typer(operators_cli, name="operators")


def main() -> None:
    cli()


@cli.command()
def migrate() -> None:
    """Apply the database migrations (`alembic upgrade head`)."""
    database_url, _ = prepare_environment(redis=False, one_off=True)
    upgrade_head(database_url)
    console.print("[green]database is at the latest migration[/green]")


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Processes (or run several `notify api`).")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    from app import http_server
    from app.logs import configure_logging

    prepare_environment()
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    require_redis(settings.redis_url, settings.redis_start_timeout_seconds)
    http_server.serve(host=host, port=port, workers=workers)


def require_redis(redis_url: str, wait_seconds: float) -> None:
    """Wait for Redis (SIGTERM and Ctrl-C stop the wait at once), or exit 1 saying so."""
    from app.redis import RedisUnreachable, wait_for_redis

    try:
        asyncio.run(wait_for_redis(redis_url, wait_seconds))
    except RedisUnreachable as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


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
    from app.logs import configure_logging

    prepare_environment()
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    require_redis(settings.redis_url, settings.redis_start_timeout_seconds)
    from workers import settings as worker_settings
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
    asyncio.set_event_loop(new_event_loop())
    worker_settings.run(**overrides)


@api_keys_cli.command("create")
def api_keys_create(name: Annotated[str, typer.Argument(help="Who the key is for.")]) -> None:
    """Create an API key. The key is the last line printed, shown only this once."""
    from app.auth import service as auth_service

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    key_id, plaintext = asyncio.run(auth_service.issue_api_key(database_url, name))
    console.print(f"Created API key [bold]{name}[/bold] (id {key_id}). Keep it now:")
    print(plaintext, flush=True)


@gateways_cli.command("create")
def gateways_create(
    name: Annotated[str, typer.Argument(help="The phone's user name in cht-gateway.")],
    country: Annotated[
        str | None, typer.Option(help="The patients' country whose queue it serves (BD, IN).")
    ] = None,
    number: Annotated[
        str | None, typer.Option(help="The phone's own number, E.164: never a recipient.")
    ] = None,
) -> None:
    """Register a gateway phone. Its secret is the last line printed, shown only once."""
    from pydantic import ValidationError

    from app.errors import Conflict
    from app.gateways import service as gateway_service
    from app.gateways.schemas import GatewayIn

    try:
        wanted = GatewayIn(name=name, country=country, number=number)
    except ValidationError as error:
        fields = ", ".join(str(e["loc"][0]) for e in error.errors())
        console.print(
            f"[red]Invalid {fields}[/red]: a name without spaces or colons, "
            "a two-letter country, an E.164 number (+8801...)."
        )
        raise typer.Exit(2) from None
    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    try:
        gateway_id, secret = asyncio.run(
            gateway_service.issue_gateway(database_url, wanted.name, wanted.country, wanted.number)
        )
    except Conflict as error:
        console.print(f"[red]{error.message}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"Created gateway [bold]{name}[/bold] (id {gateway_id}). In cht-gateway set the URL "
        "to this service's /gateway/api/sms, the user name to the gateway's name and the "
        "password to this secret. Keep it now:"
    )
    print(secret, flush=True)


@operators_cli.command("create")
def operators_create(
    email: Annotated[str, typer.Argument(help="The operator's email: their login.")],
    role: Annotated[
        str, typer.Option(help="viewer: read; support: also see phone numbers; admin: switches.")
    ] = "viewer",
) -> None:
    """Create a dashboard operator. The password is the last line printed, shown only once."""
    from app.errors import AppError
    from app.operators import service as operator_service

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    try:
        password = asyncio.run(operator_service.issue_operator(database_url, email, role))
    except AppError as refused:
        err_console.print(f"[red]error:[/red] {refused.message}")
        raise typer.Exit(1) from None
    console.print(f"Created operator [bold]{email}[/bold] ({role}). Their password, shown once:")
    print(password, flush=True)


@operators_cli.command("revoke")
def operators_revoke(
    email: Annotated[str, typer.Argument(help="The operator's email.")],
) -> None:
    """Disable an operator and end every dashboard session of theirs at once."""
    from app.errors import AppError
    from app.operators import service as operator_service

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    try:
        ended = asyncio.run(operator_service.revoke_operator(database_url, email))
    except AppError as refused:
        err_console.print(f"[red]error:[/red] {refused.message}")
        raise typer.Exit(1) from None
    console.print(f"Operator [bold]{email}[/bold] disabled; {ended} live session(s) ended.")


@cli.command("smtp-inbound")
def smtp_inbound(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (25 behind the MX).")] = 2525,
) -> None:
    """Receive email replies and bounces by SMTP (for EMAIL_INBOUND_DOMAIN only)."""
    from arq import create_pool

    from app.db.session import create_engine_and_sessionmaker
    from app.email.smtp_receiver import serve
    from app.logs import configure_logging
    from app.redis import redis_settings

    database_url, redis_url = prepare_environment(redis=False)
    require_migrated(database_url)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)

    async def run() -> None:
        engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=5)
        # With Redis configured, the answer to a STOP/START/HELP by email goes to a
        # worker at once; without, the workers' cron finds it.
        redis = await create_pool(redis_settings(redis_url)) if redis_url else None
        try:
            await serve(settings, sessionmaker, host, port, redis=redis)
        finally:
            if redis is not None:
                await redis.aclose()
            await engine.dispose()

    console.print(f"SMTP receiver for @{settings.email_inbound_domain} on {host}:{port}")
    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


@cli.command()
def invite(
    limit: Annotated[
        int | None, typer.Option(min=1, help="Invite at most this many patients.")
    ] = None,
) -> None:
    """Run an Imo invitation round now, with a progress bar and a summary at the end.

    Workers that are running join the round as they would any other."""
    from app.imo import terminal
    from app.logs import configure_logging

    database_url, _ = prepare_environment(one_off=True)
    require_migrated(database_url)
    settings = get_settings()
    configure_logging("WARNING", json=False)
    if not (settings.imo_base_url and settings.imo_username):
        err_console.print("[red]error:[/red] Imo is not configured (IMO_BASE_URL, IMO_USERNAME)")
        raise typer.Exit(1)
    raise typer.Exit(asyncio.run(terminal.run_round(settings, limit, console)))


@cli.command()
def broadcast(
    group: Annotated[str, typer.Argument(help="The group's name.")],
    template: Annotated[
        str | None, typer.Argument(help="The template's key (or --text instead).")
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(help="Instead of a template: one text, sent to every member as written."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="name=value (repeat); @name, @<attribute> filled per recipient."
        ),
    ] = None,
    purpose: Annotated[str, typer.Option(help="The messages' purpose.")] = "broadcast",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the members and show three texts.")
    ] = False,
) -> None:
    """Send a template (or a --text) to every member of a group, with a progress bar while
    it is scheduled (the workers send it); --dry-run shows the count and three samples."""
    from pydantic import ValidationError

    from app.broadcasts import terminal
    from app.broadcasts.schemas import BroadcastIn
    from app.logs import configure_logging

    parameters = {}
    for pair in param or []:
        name, equals, value = pair.partition("=")
        if not equals:
            err_console.print(f"[red]error:[/red] --param {pair!r} is not name=value")
            raise typer.Exit(2)
        parameters[name] = value
    try:
        request = BroadcastIn(
            group=group, template=template, text=text, parameters=parameters, purpose=purpose
        )
    except ValidationError as invalid:
        err_console.print(f"[red]error:[/red] {invalid}")
        raise typer.Exit(2) from None
    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    configure_logging("WARNING", json=False)
    raise typer.Exit(asyncio.run(terminal.run(get_settings(), request, console, dry_run=dry_run)))


@experiments_cli.command("report")
def experiments_report(
    experiment: Annotated[str, typer.Argument(help="The experiment's id or name.")],
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write one row per enrolled patient here.", dir_okay=False),
    ] = None,
) -> None:
    """Print an experiment's results per group, as GET /v1/experiments/{id}/results."""
    from app.experiments import report

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    raise typer.Exit(asyncio.run(report.run_report(database_url, experiment, csv_path)))


@api_keys_cli.command("list")
def api_keys_list() -> None:
    """Every API key: name, prefix, created, last used (to the minute), revoked."""
    from app.auth import terminal

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    console.print(terminal.keys_table(asyncio.run(terminal.every_key(database_url))))


@api_keys_cli.command("revoke")
def api_keys_revoke(
    name_or_prefix: Annotated[
        str, typer.Argument(help="The key's prefix (as listed), or its name if only one has it.")
    ],
) -> None:
    """Revoke a key: its next request is refused (401)."""
    from app.auth import terminal
    from app.errors import AppError

    database_url, _ = prepare_environment(redis=False, one_off=True)
    require_migrated(database_url)
    try:
        revoked = asyncio.run(terminal.revoke(database_url, name_or_prefix))
    except AppError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    console.print(f"Revoked API key [bold]{revoked.name}[/bold] ({revoked.prefix}...)")


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


@cli.command("fake-gateway")
def fake_gateway(
    url: Annotated[str, typer.Option(help="The service's /gateway/api/sms URL.")],
    user: Annotated[str, typer.Option(help="The gateway's name.")],
    password: Annotated[
        str, typer.Option(help="The gateway's secret.", envvar="FAKE_GATEWAY_PASSWORD")
    ],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 5.0,
    fail_rate: Annotated[float, typer.Option(help="Share of messages reported FAILED.")] = 0.0,
) -> None:
    """Poll like a cht-gateway phone: take messages, report them sent and delivered."""
    from app.fakes import gateway

    config = gateway.FakeGatewayConfig(
        url=url, user=user, password=password, interval=interval, fail_rate=fail_rate
    )
    asyncio.run(gateway.run_until_stopped(config))


@cli.command("fake-whatsapp")
def fake_whatsapp(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8003,
    callback_delay: Annotated[
        float | None, typer.Option(help="Seconds between status webhooks.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any FakeWhatsAppConfig field, e.g. --set webhook_url=http://h/callbacks/whatsapp.",
        ),
    ] = None,
) -> None:
    """Serve the fake WhatsApp Cloud API (base URL http://HOST:PORT)."""
    from app.fakes import whatsapp

    options = parse_overrides(set_ or [])
    if callback_delay is not None:
        options["callback_delay"] = callback_delay
    whatsapp.run(host, port, whatsapp.FakeWhatsAppConfig(**options))


@cli.command("fake-mail")
def fake_mail(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option(help="SMTP; 0: any free port.")] = 8025,
    port: Annotated[int, typer.Option(help="HTTP (/_fake/mail); 0: any free port.")] = 8004,
    folder: Annotated[
        Path | None, typer.Option(help="Where mail is kept; default DATA_DIR/mail.")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="The newest messages kept.")] = 1000,
    inbound_smtp: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of `notify smtp-inbound`: where POST /_fake/mail/ID/reply and "
            "/bounce send a kept message's reply or bounce."
        ),
    ] = None,
) -> None:
    """Serve the embedded SMTP server: accepts every message, relays none, keeps the
    newest in a folder and shows them at http://HOST:PORT/_fake/mail."""
    from app.fakes import mail

    if folder is None:
        folder = Path(get_settings().data_dir) / "mail"
    inbound = None
    if inbound_smtp:
        inbound_host, _, inbound_port = inbound_smtp.rpartition(":")
        if not inbound_host or not inbound_port.isdigit():
            raise typer.BadParameter("HOST:PORT", param_hint="--inbound-smtp")
        inbound = (inbound_host, int(inbound_port))
    mail.serve(folder, host, smtp_port, port, keep, inbound)


@cli.command("webhook-sink")
def webhook_sink(
    secret: Annotated[str, typer.Option(help="The endpoint's secret (whsec_...).")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8090,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of deliveries to answer 500.")
    ] = 0.0,
) -> None:
    """Receive webhooks: verify each signature, print one line per event (GET
    /_sink/events lists them)."""
    from app.fakes import webhook_sink

    webhook_sink.run(webhook_sink.WebhookSink(secret, fail_rate=fail_rate), host, port)


@cli.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
) -> None:
    """Everything in one process tree: embedded databases, migrations, fakes, API, worker."""
    from app.devtools import devstack

    raise typer.Exit(devstack.run(host, port))


if __name__ == "__main__":
    main()
