"""The documentation: every setting documented (from a generated page that is up to
date), the README short and giving the two commands, every page in the site's nav."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from dispatcher import DispatcherSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text()
    missing = [name for name in DispatcherSettings.model_fields
               if f"| `DISPATCH_{name.upper()}`" not in text]
    assert missing == []


def test_settings_page_is_generated_and_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCS / "gen_settings.py"), "--check"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 150


def _nav_pages(nav: object) -> set[str]:
    """Every page file named in mkdocs.yml's (possibly nested) nav."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_nav_pages(item) for item in nav))
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(value) for value in nav.values()))
    return set()


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    nav = _nav_pages(config["nav"])
    assert sorted(pages - nav) == []
    assert sorted(nav - pages) == []


def test_readme_metrics_are_documented_in_operations() -> None:
    names = set(re.findall(r"`(dispatch_[a-z_]+)`", README.read_text()))
    operations = (DOCS / "operations.md").read_text()
    assert names
    assert sorted(n for n in names if f"| `{n}` |" not in operations) == []
