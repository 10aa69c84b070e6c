"""The `notify` command."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import delete
from typer.testing import CliRunner

from app.auth import service as auth_service
from app.cli import cli
from app.db.session import create_engine_and_sessionmaker
from app.devtools.environment import notify_command, parse_overrides
from app.models import ApiKey
from tests.stack import Services, with_redis_db

runner = CliRunner()


def run_notify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        notify_command(*args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestHelp:
    def test_lists_every_command(self) -> None:
        result = runner.invoke(cli, ["--help"])
        assert result.exit_code == 0
        commands = ("dev", "migrate", "api", "worker", "api-keys", "fake-imo", "fake-twilio")
        for name in (*commands, "fake-whatsapp"):
            assert name in result.output

    def test_every_command_the_readme_names_exists(self) -> None:
        """README's table of commands is the contract: `notify X Y|Z` must each run
        (`notify bench ratelimit` was named there and did not)."""
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        named = re.findall(
            r"^\| `notify ([a-z-]+(?: [a-z][a-z-]*(?:\\\|[a-z][a-z-]*)*)?)", readme, re.M
        )
        assert named, "no command found in README's table"
        for entry in named:
            group, _, subcommands = entry.partition(" ")
            for sub in subcommands.split("\\|") if subcommands else [""]:
                args = [group, sub, "--help"] if sub else [group, "--help"]
                result = runner.invoke(cli, args)
                assert result.exit_code == 0, (args, result.output)


class TestSetOptions:
    def test_values_are_json_else_text(self) -> None:
        assert parse_overrides(["error_rate=0.5", "callbacks-enabled=false", "x=abc"]) == {
            "error_rate": 0.5,
            "callbacks_enabled": False,
            "x": "abc",
        }

    def test_a_pair_without_equals_is_refused(self) -> None:
        with pytest.raises(Exception, match="KEY=VALUE"):
            parse_overrides(["oops"])


class TestApiKeysCreate:
    def test_the_key_is_the_last_line_and_works(self, services: Services) -> None:
        result = runner.invoke(cli, ["api-keys", "create", "cli-test"])
        assert result.exit_code == 0, result.output
        plaintext = result.output.strip().splitlines()[-1]

        async def check_and_remove() -> bool:
            engine, sessionmaker = create_engine_and_sessionmaker(services.database_url)
            try:
                async with sessionmaker() as session:
                    found = await auth_service.authenticate(session, plaintext)
                    await session.execute(delete(ApiKey).where(ApiKey.name == "cli-test"))
                    await session.commit()
                    return found is not None and found.name == "cli-test"
            finally:
                await engine.dispose()

        assert asyncio.run(check_and_remove())


class TestApiKeysListAndRevoke:
    def test_list_shows_last_use_and_revoke_takes_a_name_or_prefix(
        self, services: Services
    ) -> None:
        name = f"cli-{os.getpid()}"
        created = runner.invoke(cli, ["api-keys", "create", name])
        assert created.exit_code == 0, created.output
        plaintext = created.output.strip().splitlines()[-1]

        async def use_key() -> None:
            engine, sessionmaker = create_engine_and_sessionmaker(services.database_url)
            try:
                async with sessionmaker() as session:
                    assert await auth_service.authenticate(session, plaintext) is not None
                    await session.commit()
            finally:
                await engine.dispose()

        asyncio.run(use_key())
        listed = runner.invoke(cli, ["api-keys", "list"])
        assert listed.exit_code == 0, listed.output
        line = next(line for line in listed.output.splitlines() if name in line)
        # created and last used; not revoked
        assert plaintext[:10] in line
        assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d", line)) == 2, listed.output

        revoked = runner.invoke(cli, ["api-keys", "revoke", name])
        assert revoked.exit_code == 0, revoked.output
        assert "Revoked" in revoked.output
        again = runner.invoke(cli, ["api-keys", "revoke", name])
        assert again.exit_code == 1 and "no live API key" in again.output


class TestMigrate:
    def test_is_idempotent_from_any_cwd(self, services: Services, tmp_path) -> None:
        result = subprocess.run(
            notify_command("migrate"),
            env={**os.environ, "DATABASE_URL": services.database_url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


class TestWorker:
    def test_burst_runs_the_queue_and_exits(self, services: Services) -> None:
        redis_url = with_redis_db(services.redis_url, 14)
        result = run_notify("worker", "--burst", env={"REDIS_URL": redis_url})
        assert result.returncode == 0, result.stderr
