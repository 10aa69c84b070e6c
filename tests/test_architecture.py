"""Imports run one way: the import-linter contracts in pyproject.toml hold, and no package
imports a sibling that imports it back. CI runs this as part of `./scripts/test`."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*CONFIG["root_packages"], cache_dir=None)


def layers_of_the_contract() -> list[grimp.Layer]:
    [contract] = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    layers = []
    for layer in contract["layers"]:
        independent = "|" in layer
        modules = [m.strip() for m in layer.replace("|", ":").split(":")]
        layers.append(grimp.Layer(*modules, independent=independent))
    return layers


def cycles(graph: grimp.ImportGraph) -> dict[str, set[tuple[str, str]]]:
    """Per package, the imports that would break its children's cycles (none: acyclic)."""
    found = {}
    for package in sorted(graph.modules):
        if graph.find_children(package):
            breakers = graph.nominate_cycle_breakers(package)
            if breakers:
                found[package] = breakers
    return found


def test_lint_imports_keeps_every_contract() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


class TestLayers:
    def test_every_module_of_the_app_has_its_layer(self, graph: grimp.ImportGraph) -> None:
        """A new package or module is placed in pyproject.toml's layers, not left out."""
        placed = {module for layer in layers_of_the_contract() for module in layer.module_tails}
        assert graph.find_children("app") - placed == set()

    def test_no_import_runs_back_up(self, graph: grimp.ImportGraph) -> None:
        illegal = graph.find_illegal_dependencies_for_layers(layers=layers_of_the_contract())
        assert illegal == set()

    def test_an_import_of_the_worker_from_a_model_would_be_caught(
        self, graph: grimp.ImportGraph
    ) -> None:
        graph.add_import(importer="app.models.notification", imported="workers.settings")
        try:
            illegal = graph.find_illegal_dependencies_for_layers(layers=layers_of_the_contract())
        finally:
            graph.remove_import(importer="app.models.notification", imported="workers.settings")
        assert {(d.importer, d.imported) for d in illegal} == {("app.models", "workers")}


class TestCommandRoot:
    def test_nothing_imports_the_command_root(self, graph: grimp.ImportGraph) -> None:
        """app/cli.py is a root: no cycle can run through it (issue 10: bench, imo and
        experiments imported it back, a circle of 10 files)."""
        assert graph.find_modules_that_directly_import("app.cli") == set()

    def test_only_the_command_root_imports_workers(self, graph: grimp.ImportGraph) -> None:
        importers = {
            importer
            for module in graph.find_descendants("workers") | {"workers"}
            for importer in graph.find_modules_that_directly_import(module)
            if importer == "app" or importer.startswith("app.")
        }
        assert importers == {"app.cli"}


class TestCycles:
    def test_no_package_imports_a_sibling_that_imports_it_back(
        self, graph: grimp.ImportGraph
    ) -> None:
        assert cycles(graph) == {}

    def test_a_cycle_would_be_found(self, graph: grimp.ImportGraph) -> None:
        # The database layer reaching up into a model: app.db -> app.models -> app.db.
        graph.add_import(importer="app.db.session", imported="app.models.notification")
        try:
            found = cycles(graph)
        finally:
            graph.remove_import(importer="app.db.session", imported="app.models.notification")
        assert "app" in found


def sql_imports(source: str) -> set[str]:
    """What a module takes from SQLAlchemy to build statements with: anything but the
    session types (`sqlalchemy.ext.asyncio`) and the errors (`sqlalchemy.exc`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            if node.module not in ("sqlalchemy.ext.asyncio", "sqlalchemy.exc"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sqlalchemy")}
    return found


class TestSqlInRepositories:
    """Services (and the invitation runner) call repositories for their SQL (issue 10,
    item 3): the statements of a feature are in one place."""

    def test_no_service_builds_a_statement(self) -> None:
        modules = [*sorted((ROOT / "app").rglob("service.py")), ROOT / "app/imo/runner.py"]
        found = {
            str(path.relative_to(ROOT)): sorted(sql_imports(path.read_text())) for path in modules
        }
        assert {path: names for path, names in found.items() if names} == {}

    def test_a_select_in_a_service_would_be_caught(self) -> None:
        source = "from sqlalchemy import select, text\nfrom sqlalchemy.exc import IntegrityError\n"
        assert sql_imports(source) == {"sqlalchemy.select", "sqlalchemy.text"}
