"""Shared test configuration: every test starts from settings without a broker; the
fault-injection and soak tables are printed at the end of the run."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator

import pytest

from tests import summary

for _name in list(os.environ):
    if _name.startswith("DISPATCH_") or _name == "REDIS_URL":
        del os.environ[_name]

# A suite started in the background (`make test &`, a CI runner without job control)
# inherits SIGINT ignored, and so would every process it starts: Python then never
# raises KeyboardInterrupt, and the tests that press Ctrl-C on a command would hang.
# A handler here is reset to the default in each child (a handler, unlike "ignore",
# does not survive exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _fresh_dispatcher_settings() -> Iterator[None]:
    """Each test gets default settings (no broker) unless it configures its own."""
    from dispatcher import DispatcherSettings, configure

    configure(DispatcherSettings(broker_url=None, _env_file=None))  # type: ignore[call-arg]
    yield
    configure(DispatcherSettings(broker_url=None, _env_file=None))  # type: ignore[call-arg]


def pytest_configure(config: pytest.Config) -> None:
    """The starting process names a folder for the end-of-run tables (``summary``);
    pytest-xdist workers inherit it and write their rows there."""
    if not hasattr(config, "workerinput") and not os.environ.get(summary.ENV):
        folder = tempfile.mkdtemp(prefix="tests-summary-")
        os.environ[summary.ENV] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write = terminalreporter.write_line
    results = summary.rows("reliability")
    if results:
        scale = "full" if os.environ.get("RELIABILITY_SCALE") == "full" else "small"
        write("")
        write(f"fault-injection results (scale: {scale})")
        header = f"{'scenario':<34} {'accepted':>8} {'completed':>9} {'lost':>5} {'dup':>4}  note"
        write(header)
        write("-" * len(header))
        for row in results:
            write(f"{row['scenario']:<34} {row['accepted']:>8} {row['completed']:>9} "
                  f"{row['lost']:>5} {row['duplicates']:>4}  {row['note']}")
    # With -s (``make soak``) the soak printed its table as it went.
    soaks = summary.rows("soak")
    if soaks and terminalreporter.config.getoption("capture") != "no":
        write("")
        for line in soaks:
            write(line)
