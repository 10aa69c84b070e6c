"""What every `notify` command prepares before it runs: settings, the database and Redis
(embedded ones when unset), the migrations, an event loop."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

import app as app_package
from app import embedded
from app.config import Settings, get_settings
from app.devtools.console import err_console

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


def notify_command(*args: str) -> list[str]:
    """argv that runs `notify ARGS` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", "from app.cli import main; main()", *args]


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
