"""The README and docs/ name only what the repository holds: every Markdown file they
refer to is in it, and none points at a path on someone's machine (issue 10: docs cited
CONTRACT.md and imo-partner-api.md, which a clone does not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_MARKDOWN_NAME = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")
# A path into someone's machine (not a URL path like `/v1/...`, a repository path, or a
# scratch folder an example invents, such as `DATA_DIR=/tmp/bench-data`).
_MACHINE_PATH = re.compile(r"(?<![\w.:/])(?:/work|/home|/root|/Users|~)/[\w.-]+")


def referred_markdown(document: Path) -> set[str]:
    return set(_MARKDOWN_NAME.findall(document.read_text()))


def resolves(document: Path, name: str) -> bool:
    """Relative to the document, the repository's root or docs/, as a reader would look."""
    if name.startswith("/"):
        return False
    return any((base / name).is_file() for base in (document.parent, ROOT, ROOT / "docs"))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_file_named_is_in_the_repository(document: Path) -> None:
    missing = {name for name in referred_markdown(document) if not resolves(document, name)}
    assert missing == set()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_outside_the_repository(document: Path) -> None:
    assert _MACHINE_PATH.findall(document.read_text()) == []


def test_a_missing_file_is_caught(tmp_path: Path) -> None:
    document = tmp_path / "guide.md"
    document.write_text("See CONTRACT.md and `/work/shared/imo-partner-api.md`.\n")
    assert referred_markdown(document) == {"CONTRACT.md", "/work/shared/imo-partner-api.md"}
    assert not resolves(document, "CONTRACT.md")
    assert not resolves(document, "/work/shared/imo-partner-api.md")
    assert _MACHINE_PATH.findall(document.read_text()) == ["/work/shared"]
