"""What every `notify` command prepares: the project's data folder, `notify dev`'s
dev.env, and no embedded server left behind by a one-off command."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import app as app_package
from app import embedded
from app.config import Settings, get_settings
from app.devtools.environment import (
    data_dir_or_exit,
    find_data_dir,
    notify_command,
    prepare_environment,
    read_dev_env,
    write_dev_env,
)


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "clinic-notify"\n')
    return folder


@pytest.fixture
def settings_cleared() -> Iterator[None]:
    """Settings read afresh from this test's environment, and forgotten after it: a
    benchmark run in-process earlier leaves its own cached (with another DATA_DIR)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class TestFindDataDir:
    @pytest.fixture(autouse=True)
    def no_data_dir_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("DATA_DIR", raising=False)

    def test_data_dir_set_wins(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=str(tmp_path / "mine"))
        assert find_data_dir(settings, cwd=project(tmp_path / "p")) == tmp_path / "mine"

    def test_the_project_above_the_working_folder(self, tmp_path: Path) -> None:
        root = project(tmp_path / "checkout")
        inside = root / "docs" / "deep"
        inside.mkdir(parents=True)
        elsewhere = tmp_path / "elsewhere"
        assert find_data_dir(Settings(), cwd=inside, package_root=elsewhere) == root / ".data"

    def test_a_data_folder_of_ours_above_the_working_folder(self, tmp_path: Path) -> None:
        (tmp_path / "deploy" / ".data").mkdir(parents=True)
        (tmp_path / "deploy" / ".data" / "secret_key").write_text("k")
        cwd = tmp_path / "deploy" / "logs"
        cwd.mkdir()
        assert find_data_dir(Settings(), cwd=cwd, package_root=tmp_path / "x") == (
            tmp_path / "deploy" / ".data"
        )

    def test_from_another_folder_the_checkout_the_package_runs_from(self, tmp_path: Path) -> None:
        root = project(tmp_path / "checkout")
        unrelated = tmp_path / "home"
        unrelated.mkdir()
        assert find_data_dir(Settings(), cwd=unrelated, package_root=root) == root / ".data"

    def test_none_without_a_project(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.chdir(tmp_path)
        installed = tmp_path / "site-packages" / "app" / "__init__.py"
        monkeypatch.setattr(app_package, "__file__", str(installed))
        assert find_data_dir(Settings()) is None
        with pytest.raises(typer.Exit) as exit_:
            data_dir_or_exit(Settings())
        assert exit_.value.exit_code == 1
        err = capsys.readouterr().err
        assert "no clinic-notify data folder" in err and "DATA_DIR" in err
        assert err.count("\n") == 1  # one line, no traceback


class TestDevEnv:
    def test_read_back_while_notify_dev_runs(self, tmp_path: Path) -> None:
        write_dev_env(tmp_path, {"IMO_BASE_URL": "http://127.0.0.1:1/api/simple"})
        assert read_dev_env(tmp_path) == {"IMO_BASE_URL": "http://127.0.0.1:1/api/simple"}
        assert (tmp_path / "dev.env").stat().st_mode & 0o077 == 0

    def test_ignored_once_the_notify_dev_that_wrote_it_is_gone(self, tmp_path: Path) -> None:
        (tmp_path / "dev.env").write_text(
            f"NOTIFY_DEV_PID={_a_dead_pid()}\nIMO_BASE_URL=http://127.0.0.1:1\n"
        )
        assert read_dev_env(tmp_path) == {}
        assert read_dev_env(tmp_path / "missing") == {}

    @pytest.mark.usefixtures("settings_cleared")
    def test_every_command_reads_it_and_the_environment_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATA_DIR", str(tmp_path))
        monkeypatch.delenv("IMO_BASE_URL", raising=False)
        monkeypatch.setenv("PUBLIC_BASE_URL", "https://set.by.me")
        write_dev_env(
            tmp_path,
            {"IMO_BASE_URL": "http://127.0.0.1:1/api/simple", "PUBLIC_BASE_URL": "http://dev"},
        )
        prepare_environment()
        settings = get_settings()
        assert settings.imo_base_url == "http://127.0.0.1:1/api/simple"
        assert settings.public_base_url == "https://set.by.me"

    @pytest.mark.usefixtures("settings_cleared")
    def test_not_by_notify_dev_itself(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATA_DIR", str(tmp_path))
        monkeypatch.delenv("IMO_BASE_URL", raising=False)
        write_dev_env(tmp_path, {"IMO_BASE_URL": "http://127.0.0.1:1/api/simple"})
        prepare_environment(dev_env=False)
        assert "IMO_BASE_URL" not in os.environ


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def fresh_data_dir() -> Iterator[Path]:
    """A data folder the embedded PostgreSQL's system user can reach; cleaned up."""
    path = Path(tempfile.mkdtemp(prefix="clinic-notify-environment-"))
    try:
        yield path / "data"
    finally:
        embedded.stop_all(path / "data")
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.e2e
class TestOneOffCommands:
    def run(self, data_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(DATA_DIR=str(data_dir), APP_ENV="development", SECRET_KEY="")
        return subprocess.run(
            notify_command(*args),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def test_leave_no_server_and_say_in_one_line_what_is_missing(
        self, fresh_data_dir: Path, tmp_path: Path
    ) -> None:
        refused = self.run(fresh_data_dir, tmp_path, "api-keys", "create", "early")
        assert refused.returncode == 1
        assert "run `notify migrate` first" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not embedded.postgres_running(fresh_data_dir)

        migrated = self.run(fresh_data_dir, tmp_path, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert not embedded.postgres_running(fresh_data_dir)

        created = self.run(fresh_data_dir, tmp_path, "api-keys", "create", "later")
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip().splitlines()[-1].startswith("cn_")
        assert not embedded.postgres_running(fresh_data_dir)
        assert not (tmp_path / ".data").exists()  # nothing in the folder it ran from

    def test_every_one_off_command_refuses_an_unmigrated_database_in_one_line(
        self, fresh_data_dir: Path, tmp_path: Path
    ) -> None:
        """`api-keys list` and `revoke` crashed here with a 500-line traceback and left
        the PostgreSQL they started running; `experiments report` started a Redis it
        never used."""
        for args in (
            ("api-keys", "list"),
            ("api-keys", "revoke", "cn_abc"),
            ("experiments", "report", "some-name"),
        ):
            refused = self.run(fresh_data_dir, tmp_path, *args)
            assert refused.returncode == 1, (args, refused.stderr)
            assert "run `notify migrate` first" in refused.stderr, args
            assert "Traceback" not in refused.stdout + refused.stderr, args
            assert not embedded.postgres_running(fresh_data_dir), args
        assert not (fresh_data_dir / "redis").exists()  # none of them needs Redis

    def test_leave_a_server_they_did_not_start_running(
        self, fresh_data_dir: Path, tmp_path: Path
    ) -> None:
        embedded.ensure_postgres(fresh_data_dir, durable=False)
        migrated = self.run(fresh_data_dir, tmp_path, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert embedded.postgres_running(fresh_data_dir)


class TestScriptsNotify:
    def test_runs_notify_from_any_folder(self, tmp_path: Path) -> None:
        script = Path(__file__).resolve().parents[2] / "scripts" / "notify"
        result = subprocess.run(
            [str(script), "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "api-keys" in result.stdout and "invite" in result.stdout
