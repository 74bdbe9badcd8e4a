"""The chaos soak prints its table at the end of the session (``make soak``)."""

from __future__ import annotations

import pytest

#: Lines of each soak's report, in the order the soaks ran.
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # With -s (``make soak``) the soak printed its table as it went.
    if not REPORT or terminalreporter.config.getoption("capture") == "no":
        return
    terminalreporter.write_line("")
    for line in REPORT:
        terminalreporter.write_line(line)
