"""The runner's side: one embedded Redis (a database per peer), the peers' agents and
worker processes, each started in a session of its own and stopped by process group,
and their memory read from /proc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.peers import Spec

ROOT = Path(__file__).resolve().parents[2]


class Harness:
    def __init__(self) -> None:
        from dispatcher.store.embedded import EmbeddedRedis

        self.redis = EmbeddedRedis().start()
        # Logs and the spool outside the server's directory, which it removes at close:
        # kept if the run fails, for a look at what a process said.
        self.data = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        self.base_env["PYTHONUNBUFFERED"] = "1"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.described: dict[str, dict[str, object]] = {}
        self.logs = 0

    def python(self, spec: Spec) -> str:
        return str(ROOT / spec.venv / "bin" / "python") if spec.venv else sys.executable

    def available(self, spec: Spec) -> bool:
        return Path(self.python(spec)).exists()

    def client(self, spec: Spec) -> redis.Redis:
        return redis.Redis.from_url(self.url(spec))

    def url(self, spec: Spec) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{spec.db}"

    def env(self, spec: Spec, worker: bool = False) -> dict[str, str]:
        env = {**self.base_env, "BENCH_REDIS_URL": self.url(spec)}
        if spec.dispatcher:
            env.update(DISPATCH_BROKER_URL=self.url(spec),
                       DISPATCH_TASK_MODULES="bench.worker_tasks",
                       DISPATCH_SPOOL_PATH=str(self.data / "spool.sqlite3"), **dict(spec.settings))
            if worker:
                from dispatcher.store.embedded import free_port

                env["DISPATCH_METRICS_PORT"] = str(free_port())
        return env

    def flush(self) -> None:
        redis.Redis.from_url(self.redis.url).flushall()

    # -- agents -------------------------------------------------------------------

    def agent_args(self, spec: Spec, mode: str, n: int = 0) -> list[str]:
        return [self.python(spec), "-m", "bench.peers.agent", spec.target, mode, str(n)]

    def log(self, name: str) -> Path:
        self.logs += 1
        return self.data / f"{self.logs:04d}-{name}.log"

    def agent(self, spec: Spec, mode: str, n: int = 0, timeout: float = 900) -> dict[str, float]:
        log = self.log(f"{spec.name}-{mode}")
        with log.open("wb") as err:
            out = subprocess.run(self.agent_args(spec, mode, n), cwd=ROOT, env=self.env(spec),
                                 stdout=subprocess.PIPE, stderr=err, timeout=timeout)
        return parse(out.stdout.decode(), out.returncode, log)

    def agents_together(self, spec: Spec, mode: str, n: int, k: int) -> list[dict[str, float]]:
        """``k`` agents, ``n`` jobs each, released at once after their warm-up."""
        procs, logs = [], []
        for _ in range(k):
            logs.append(self.log(f"{spec.name}-{mode}-x{k}"))
            procs.append(subprocess.Popen(
                [*self.agent_args(spec, mode, n), "--barrier"], cwd=ROOT, env=self.env(spec),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1].open("wb")))
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"READY":
                raise RuntimeError(f"{spec.name} agent did not get ready; see {logs}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = []
        for proc, log in zip(procs, logs, strict=True):
            out, _ = proc.communicate(timeout=900)
            results.append(parse(out.decode(), proc.returncode, log))
        return results

    def describe(self, spec: Spec) -> dict[str, object]:
        if spec.name not in self.described:
            self.described[spec.name] = dict(self.agent(spec, "describe"))
        return self.described[spec.name]

    # -- workers ------------------------------------------------------------------

    def start_worker(self, spec: Spec, index: int = 0) -> subprocess.Popen[bytes]:
        commands = self.describe(spec)["workers"]
        assert isinstance(commands, list)
        log = self.log(f"{spec.name}-worker{index}").open("wb")
        process = subprocess.Popen(commands[index], cwd=ROOT, env=self.env(spec, worker=True),
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.workers.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the worker's process group, SIGKILL after 20 s; then any process
        of its tree still there (one that left the group, as RQ's work horses do)."""
        tree = {pid: started(pid) for pid in descendants(process.pid)}
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        time.sleep(0.2)
        for pid, since in tree.items():
            if since is not None and started(pid) == since:  # the same process, still there
                os.kill(pid, signal.SIGKILL)
        if process in self.workers:
            self.workers.remove(process)

    def close(self, keep_logs: bool) -> None:
        for process in list(self.workers):
            self.stop(process)
        self.redis.close()
        if keep_logs:
            print(f"logs kept in {self.data}", file=sys.stderr)
        else:
            shutil.rmtree(self.data, ignore_errors=True)


def parse(stdout: str, returncode: int, log: Path) -> dict[str, float]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode or not lines:
        raise RuntimeError(f"agent failed (exit {returncode}); see {log}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def started(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); ``None``: gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss(root: int) -> tuple[float, int]:
    """Total RSS (MiB) of ``root`` and every process below it, and how many there are."""
    total, count = 0, 0
    for pid in [root, *descendants(root)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:")), None)
        if kib is not None:
            total, count = total + kib, count + 1
    return total / 1024, count
