"""What every `notify` command prepares before it runs: settings, the project's data
folder, the database and Redis (embedded ones when unset), the migrations.

The data folder is `DATA_DIR` when set, else the `.data` of the clinic-notify project
the command runs in (the working folder or one above it), else of the checkout the
package runs from: `notify` from any folder finds the same embedded servers, never a new
one in the folder it happens to run in. While `notify dev` runs, it writes its fakes' URLs
and credentials to `DATA_DIR/dev.env`, which every other command reads (variables set
in the environment win), so `notify invite` in another terminal reaches the same fakes.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
from collections.abc import Mapping, Sequence
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


PROJECT_NAME = 'name = "clinic-notify"'
DEV_ENV = "dev.env"
_DEV_PID = "NOTIFY_DEV_PID"


def _is_project(folder: Path) -> bool:
    try:
        return PROJECT_NAME in (folder / "pyproject.toml").read_text()
    except OSError:
        return False


def find_data_dir(
    settings: Settings, cwd: Path | None = None, package_root: Path | None = None
) -> Path | None:
    """`DATA_DIR` when set; else `.data` of the project holding `cwd` (or a folder above
    it with a `.data` of ours), else of the checkout at `package_root` (by default the
    one this package runs from). None when there is no such folder."""
    if "data_dir" in settings.model_fields_set:
        return Path(settings.data_dir).expanduser().resolve()
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        data = folder / ".data"
        if _is_project(folder) or (data / "secret_key").is_file():
            return data
    root = package_root or Path(app_package.__file__).resolve().parent.parent
    return root / ".data" if _is_project(root) else None


def data_dir_or_exit(settings: Settings) -> Path:
    data_dir = find_data_dir(settings)
    if data_dir is None:
        err_console.print(
            "[red]error:[/red] no clinic-notify data folder here: run `notify` from the "
            "project's folder, or set DATA_DIR (or DATABASE_URL and REDIS_URL)"
        )
        raise typer.Exit(1)
    return data_dir


def write_dev_env(data_dir: Path, values: Mapping[str, str]) -> Path:
    """`notify dev`'s word to the other commands: `values`, for as long as it runs."""
    path = data_dir / DEV_ENV
    lines = [
        "# Written by `notify dev` for the other `notify` commands; gone when it stops.",
        f"{_DEV_PID}={os.getpid()}",
        *(f"{key}={value}" for key, value in values.items()),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # credentials, if fake
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def read_dev_env(data_dir: Path) -> dict[str, str]:
    """What a running `notify dev` wrote; nothing when none runs (a file left by one
    that was killed names a process that is gone)."""
    try:
        text = (data_dir / DEV_ENV).read_text()
    except OSError:
        return {}
    values = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[:1] != "#"
    )
    try:
        os.kill(int(values.pop(_DEV_PID, "")), 0)
    except (ValueError, ProcessLookupError):
        return {}
    except PermissionError:  # alive, another user's
        pass
    return values


def _stop_at_exit_what_this_starts(data_dir: Path) -> None:
    """A one-off command leaves behind no embedded server it started."""
    if not embedded.postgres_running(data_dir):
        atexit.register(embedded.stop_postgres, data_dir)
    if not embedded.redis_running(data_dir):
        atexit.register(embedded.stop_redis, data_dir)


def prepare_environment(
    *, redis: bool = True, one_off: bool = False, dev_env: bool = True
) -> tuple[str, str]:
    """Resolve the database and Redis URLs (embedded ones when unset) into `os.environ`.

    `redis=False` (commands that need only the database) starts no embedded Redis and
    returns the configured URL, perhaps empty. Also gives development a stable
    SECRET_KEY kept in the data folder, and reads a running `notify dev`'s `dev.env`
    (unless `dev_env=False`: `notify dev` itself).
    Everything read later through `get_settings()` (and every child process) sees the
    result. A `one_off` command stops at exit the embedded servers it started (the API
    and workers leave theirs to the next command). Exits with one line when an embedded
    service is missing or fails, when there is no data folder to keep one in, or when
    the settings are refused (in production: a missing or placeholder secret, no
    PUBLIC_BASE_URL).
    """
    settings = checked_settings()
    found = find_data_dir(settings)
    if found is not None:
        if dev_env:
            written = read_dev_env(found)
            os.environ.update({k: v for k, v in written.items() if k not in os.environ})
        os.environ["DATA_DIR"] = str(found)
        get_settings.cache_clear()
        settings = checked_settings()
    embedded_needed = not settings.database_url or (redis and not settings.redis_url)
    dev_secret = not settings.secret_key.get_secret_value() and not settings.is_production
    if not (embedded_needed or dev_secret):
        return settings.database_url, settings.redis_url
    data_dir = data_dir_or_exit(settings)
    if one_off:
        _stop_at_exit_what_this_starts(data_dir)
    try:
        database_url = settings.database_url or embedded.ensure_postgres(data_dir)
        redis_url = settings.redis_url
        if redis and not redis_url:
            redis_url = embedded.ensure_redis(data_dir)
        updates = {"DATABASE_URL": database_url}
        if redis_url:
            updates["REDIS_URL"] = redis_url
        if dev_secret:
            updates["SECRET_KEY"] = embedded.ensure_secret_key(data_dir)
    except embedded.EmbeddedServiceError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    os.environ.update(updates)
    get_settings.cache_clear()
    return database_url, redis_url


def require_migrated(database_url: str) -> None:
    """Exit with one line unless the database is at the latest migration."""
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    current = asyncio.run(_revision(database_url))
    if current not in heads:
        where = f"at {current}" if current else "empty"
        err_console.print(
            f"[red]error:[/red] the database is {where}, not at the latest migration: "
            "run `notify migrate` first"
        )
        raise typer.Exit(1)


async def _revision(database_url: str) -> str | None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            try:
                revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            except DBAPIError:  # no alembic_version table: never migrated
                return None
            return str(revision) if revision is not None else None
    finally:
        await engine.dispose()


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
