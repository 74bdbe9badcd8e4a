"""The README's settings table covers every setting."""

from __future__ import annotations

from pathlib import Path

from dispatcher import DispatcherSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in DispatcherSettings.model_fields
               if f"`DISPATCH_{name.upper()}`" not in text
               and f"`DISPATCH_{name.upper()}` (" not in text]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
