"""A Redis Sentinel set-up: a master, one replica (or more) and three Sentinels
(quorum 2), on free ports of 127.0.0.1, in a folder of their own, every process
stopped by its pid. It runs Debian's ``redis-server`` and ``redis-sentinel`` where
they are installed (CI installs them), else the ``valkey-server`` of the embedded
extra in its ``--sentinel`` mode: real servers either way, so ``make test`` needs
neither root nor a system Redis.

The data nodes are configured as docs/deployment.md asks of a Sentinel deployment:
a password (``requirepass``/``masterauth``) and ``min-replicas-to-write`` equal to the
number of replicas, so a master that lost a replica (to a promotion) refuses writes
instead of taking writes a failover would discard. The Sentinels have a password of
their own.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
import redis

from dispatcher.store.embedded import free_port, server_binary
from tests.support import wait_until

MASTER_NAME = "dispatch-main"
INSTALL_HINT = (
    "the Sentinel tests need Debian's redis-server and redis-sentinel on PATH "
    "(apt-get install redis-server redis-sentinel; .ci/run installs them when root) "
    "or the embedded extra's valkey-server"
)


def debian_binaries() -> tuple[str, str] | None:
    """``(redis-server, redis-sentinel)``, or None when either is missing."""
    server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    return (server, sentinel) if server and sentinel else None


def commands() -> tuple[list[str], list[str]] | None:
    """How to start a data node and a Sentinel (the config file follows each list, then
    the Sentinel's ``--sentinel`` where one binary serves both); None: no server."""
    debian = debian_binaries()
    if debian is not None:
        return [debian[0]], [debian[1]]
    try:
        valkey = server_binary()
    except Exception:
        return None
    return [valkey], [valkey]


def require_debian_redis() -> None:
    """Fail the test (never skip it) when no server can be had."""
    if commands() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)


class SentinelSet:
    """Master, replicas and three Sentinels; ``url`` is the dispatcher's broker URL."""

    def __init__(self, root: Path, replicas: int = 1, master_name: str = MASTER_NAME) -> None:
        found = commands()
        if found is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.server_cmd, self.sentinel_cmd = found
        #: One binary for both (Valkey): a Sentinel is told so after its config file.
        self.sentinel_flag = ["--sentinel"] if debian_binaries() is None else []
        self.root = root
        self.master_name = master_name
        self.password = secrets.token_hex(12)           # of the Redis servers
        self.sentinel_password = secrets.token_hex(12)  # of the Sentinels
        self.replicas = replicas
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- addresses -----------------------------------------------------------------
    @property
    def url(self) -> str:
        """``sentinel://`` URL list; the servers' password in the first URL."""
        first, *rest = self.sentinel_ports
        return ";".join([f"sentinel://:{self.password}@127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{port}/0" for port in rest)])

    def env(self) -> dict[str, str]:
        return {"DISPATCH_BROKER_URL": self.url, "DISPATCH_SENTINEL_MASTER": self.master_name,
                "DISPATCH_SENTINEL_PASSWORD": self.sentinel_password}

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=2)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=2)

    def master_port(self, sentinel_port: int | None = None) -> int:
        """The master's port as one Sentinel (the first by default) names it."""
        with self.sentinel(sentinel_port or self.sentinel_ports[0]) as client:
            _, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    # -- processes -------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _data_node(self, name: str, port: int, replica_of: int | None) -> None:
        lines = [
            "bind 127.0.0.1", f"port {port}", f"dir {self.root}", "protected-mode yes",
            'save ""', "appendonly no", f"dbfilename {name}.rdb", f"logfile {self.root / name}.log",
            f"requirepass {self.password}", f"masterauth {self.password}",
            f"min-replicas-to-write {self.replicas}", "min-replicas-max-lag 10",
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not after 5 s
        ]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        config = self.root / f"{name}.conf"
        config.write_text("\n".join(lines) + "\n")
        self._spawn(name, [*self.server_cmd, str(config)])

    def _sentinel_node(self, port: int, master: int) -> None:
        name = f"sentinel-{port}"
        lines = [
            "bind 127.0.0.1", f"port {port}", f"dir {self.root}", f"logfile {self.root / name}.log",
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {master} 2",
            f"sentinel auth-pass {self.master_name} {self.password}",
            f"sentinel down-after-milliseconds {self.master_name} 1000",
            f"sentinel failover-timeout {self.master_name} 5000",
            f"sentinel parallel-syncs {self.master_name} 1",
        ]
        config = self.root / f"{name}.conf"  # a Sentinel rewrites its own file
        config.write_text("\n".join(lines) + "\n")
        self._spawn(name, [*self.sentinel_cmd, str(config), *self.sentinel_flag])

    def start(self, timeout: float = 30.0) -> SentinelSet:
        master, *replicas = self.data_ports
        try:
            self._data_node("master", master, None)
            for number, replica in enumerate(replicas, 1):
                self._data_node(f"replica-{number}", replica, master)
            # The Sentinels learn of the replicas from the master's INFO, which they ask
            # at once and then every 10 s: start them once they are in sync.
            self.wait_writable(master, timeout)
            for port in self.sentinel_ports:
                self._sentinel_node(port, master)
            self.wait_ready(master, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: see {self.root / name}.log")

    def promoted(self, old: int) -> int | None:
        """The new master's port once the first Sentinel names one other than ``old``."""
        try:
            port = self.master_port()
        except (redis.RedisError, OSError):
            return None
        return None if port == old else port

    def takes_writes(self, port: int) -> bool:
        """Whether ``port`` is now a master with every replica in sync (asked once)."""
        self._check_alive()
        try:
            with self.server(port) as client:
                info = client.info("replication")
        except (redis.RedisError, OSError):
            return False
        return (info.get("role") == "master"
                and int(info.get("min_slaves_good_slaves", 0)) >= self.replicas)

    def wait_writable(self, master: int, timeout: float = 30.0) -> None:
        """Until ``master`` is a master with every replica in sync (so it takes writes)."""
        wait_until(lambda: self.takes_writes(master),
                   f"a writable master with a replica on port {master}", timeout)

    def wait_ready(self, master: int, timeout: float = 30.0) -> None:
        """Until every Sentinel names ``master``, sees a replica of it and knows the
        two other Sentinels, and the master takes writes."""
        def agreed() -> bool:
            self._check_alive()
            for port in self.sentinel_ports:
                with self.sentinel(port) as client:
                    state = client.sentinel_master(self.master_name)
                    replicas = client.sentinel_slaves(self.master_name)
                if (int(state["port"]) != master or state["num-other-sentinels"] < 2
                        or state["is_sdown"] or not any(not r["is_sdown"] for r in replicas)):
                    return False
            return True
        wait_until(agreed, f"Sentinels agreeing on the master on port {master}", timeout)
        self.wait_writable(master, timeout)

    def failover(self, timeout: float = 10.0) -> int:
        """``SENTINEL FAILOVER`` on the first Sentinel, asked again while it answers that
        it cannot start yet; returns the old master's port."""
        old = self.master_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.sentinel(self.sentinel_ports[0]) as client:
                    client.execute_command(
                        "SENTINEL", "FAILOVER", self.master_name)
                return old
            except redis.ResponseError as exc:  # NOGOODSLAVE, INPROG: not yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SENTINEL FAILOVER refused: {exc}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop every process we started, by its pid."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        """Every log line of the set, for a failure message or a secrets check."""
        return "\n".join(path.read_text(errors="replace")
                         for path in sorted(self.root.glob("*.log")))

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
