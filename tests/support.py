"""Helpers shared by the integration and reliability suites: child processes we start
and stop by pid, HTTP polling, and waiting for a condition (never for a time)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]


class Process:
    """A child process with its output in a file we can read."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 cwd: Path = ROOT) -> None:
        self.log = log
        self.url = ""
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not seen in:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer")
        time.sleep(0.1)


def poll_state(client: httpx.Client, base: str, task_id: str, states: set[str],
               timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{base}/tasks/{task_id}").json()
        if body.get("state") in states:
            return dict(body)
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} stuck in {body}")
        time.sleep(0.05)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0,
               every: float = 0.05) -> None:
    """Poll ``condition()`` (Redis and socket errors count as false) until it is true;
    ``TimeoutError`` naming ``what`` once ``timeout`` seconds passed without it. The
    timeout is a bound on a loaded machine, not a timing assertion."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g}s (last error: {last})")
        time.sleep(every)
