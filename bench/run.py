"""``make bench``, first part: the HTTP scenarios (ours at default settings next to
hand-written ``BackgroundTasks``) and the per-call costs; the peers table
(``bench.peers.run``) follows it.

Starts its own Redis, uvicorn and worker processes on 127.0.0.1, alternates ours and
the baseline (A B A B ...) for ``BENCH_ROUNDS`` rounds, and prints one table with the
median (min-max) of each and their ratio. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
#: The inline executor's default bound (``DISPATCH_INLINE_CONCURRENCY``).
DEFAULT_CONCURRENCY = 4
#: Seconds of the sustained overload (``BENCH_OVERLOAD_SECONDS``).
OVERLOAD_SECONDS = float(os.environ.get("BENCH_OVERLOAD_SECONDS", "30"))
ROWS: list[tuple[str, str, str, str, str]] = []


def spread(values: list[float], unit: str = "") -> str:
    """``median (min-max)``, with decimals enough to tell small figures apart."""
    digits = 2 if max(values) < 10 else 1 if max(values) < 100 else 0
    return (f"{statistics.median(values):,.{max(digits, 1)}f}{unit} "
            f"({min(values):,.{digits}f}-{max(values):,.{digits}f})")


def row(scenario: str, ours: list[float], base: list[float], target: str,
        unit: str = "", higher_is_better: bool = True) -> None:
    ratio = statistics.median(ours) / statistics.median(base)
    ROWS.append((scenario, spread(ours, unit), spread(base, unit), f"{ratio:.2f}", target))
    print(f"  {scenario}: ours {spread(ours, unit)} baseline {spread(base, unit)} "
          f"ratio {ratio:.2f} ({'higher' if higher_is_better else 'lower'} is better)",
          flush=True)


class Stack:
    """Redis plus the processes a scenario needs; everything stopped by pid at the end."""

    def __init__(self) -> None:
        from dispatcher.store.embedded import EmbeddedRedis

        self.redis = EmbeddedRedis().start()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        self.env.update(DISPATCH_BROKER_URL=self.redis.url, PYTHONUNBUFFERED="1",
                        DISPATCH_TASK_MODULES="bench.worker_tasks,bench.app_tasks",
                        DISPATCH_SPOOL_PATH=str(Path(self.redis.data_dir) / "spool.sqlite3"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None,
              ready: Callable[[], bool] | None = None) -> subprocess.Popen[bytes]:
        log = open(Path(self.redis.data_dir) / f"proc{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while ready is not None and not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start; see {log.name}")
            time.sleep(0.1)
        return process

    def serve(self, app: str, port: int, **env: str) -> str:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/count", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self.start([sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port",
                    str(port), "--log-level", "warning", "--no-access-log"], env, up)
        return url

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)
        self.redis.close()


def load(url: str, connections: int, seconds: float = SECONDS,
         requests: int | None = None) -> dict[str, float]:
    args = [sys.executable, "-m", "bench.load", url, "--connections", str(connections),
            "--seconds", str(seconds)]
    if requests is not None:
        args += ["--requests", str(requests)]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def counts(url: str) -> dict[str, int]:
    """The app's ``/count``: jobs done (in all, inline, on the worker), the most running
    at once and the inline jobs waiting."""
    return dict(httpx.get(f"{url}/count", timeout=5).json())


def count(url: str) -> int:
    return counts(url)["count"]


def wait_count(url: str, expected: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while count(url) < expected:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url}: {count(url)} of {expected} jobs done")
        time.sleep(0.1)
    return time.monotonic() - started


def http_scenarios(stack: Stack) -> None:
    """Ours at default settings, as a user runs it: a broker configured and a worker
    running (jobs spilled over run there), INFO events, the default executor bound,
    pending limit and hold. Tuned variants follow as info rows naming their change."""
    from dispatcher.store.embedded import free_port

    worker = stack.start([sys.executable, "-m", "worker"], {"BENCH_APPS_IN_WORKER": "1"})
    ours = stack.serve("bench.apps:ours", free_port())
    raw = stack.serve("bench.apps:raw", free_port())
    for url in (ours, raw):
        load(f"{url}/noop", 8, 1.0)  # warm up
    for connections in (2, 32):
        rps: dict[str, list[float]] = {"ours": [], "raw": []}
        p99: dict[str, list[float]] = {"ours": [], "raw": []}
        for _ in range(ROUNDS):
            for name, url in (("ours", ours), ("raw", raw)):
                before = count(url)
                result = load(f"{url}/noop", connections)
                rps[name].append(result["rps"])
                p99[name].append(result["p99_ms"])
                wait_count(url, before + int(result["requests"]))
        row(f"inline no-op job, {connections} conn: req/s", rps["ours"], rps["raw"], ">= 1.00")
        row(f"inline no-op job, {connections} conn: p99", p99["ours"], p99["raw"], "<= 1.00",
            " ms", higher_is_better=False)

    # Background work must not starve requests: a 10 ms sync job per request, against
    # the same app's endpoint without the job (and, for information, raw's).
    names = ("ours", "ours plain", "raw", "plain")
    rps = {name: [] for name in names}
    p99 = {name: [] for name in names}
    spilled: list[float] = []
    for _ in range(ROUNDS):
        for name, url, path in (("ours", ours, "/sleep10"), ("ours plain", ours, "/nojob"),
                                ("raw", raw, "/sleep10"), ("plain", raw, "/nojob")):
            before = counts(url)
            result = load(f"{url}{path}", 32)
            rps[name].append(result["rps"])
            p99[name].append(result["p99_ms"])
            if "plain" not in name:  # every job completes: count them
                wait_count(url, before["count"] + int(result["requests"]), timeout=600)
            if name == "ours":
                spilled.append(100 * (counts(url)["on_worker"] - before["on_worker"])
                               / result["requests"])
    row("10 ms job, 32 conn, 4 s: req/s vs same app without the job", rps["ours"],
        rps["ours plain"], ">= 0.95")
    row("10 ms job, 32 conn, 4 s: p99 vs same app without the job", p99["ours"],
        p99["ours plain"], "<= 1.50", " ms", higher_is_better=False)
    ROWS.append(("10 ms job, 4 s: share of jobs spilled over to the worker",
                 spread(spilled, " %"), "-", "-", "info"))
    most = {name: float(counts(url)["max_running"]) for name, url in (("ours", ours),
                                                                       ("raw", raw))}
    if most["ours"] > DEFAULT_CONCURRENCY:
        raise SystemExit(f"inline jobs ran {most} at once, above the executor's bound of "
                         f"{DEFAULT_CONCURRENCY}")
    row(f"10 ms job: most jobs running at once in the API process (ours bound "
        f"{DEFAULT_CONCURRENCY})", [most["ours"]], [most["raw"]], f"<= {DEFAULT_CONCURRENCY}")
    row("10 ms job, 32 conn: req/s vs raw plain endpoint", rps["ours"], rps["plain"], "info")
    row("10 ms job, 32 conn: raw BackgroundTasks req/s vs raw plain", rps["raw"],
        rps["plain"], "info")
    row("10 ms job, 32 conn: raw BackgroundTasks p99 vs raw plain", p99["raw"], p99["plain"],
        "info", " ms", higher_is_better=False)
    row("plain endpoint, 32 conn: ours (middleware) vs raw, req/s", rps["ours plain"],
        rps["plain"], "info")
    hand_off_floors(stack, raw)
    sustained_overload(stack, ours)

    # The seeds' benchmark: 100 requests, concurrency 10, a 2 s job per request.
    means: dict[str, list[float]] = {"sync": [], "ours": [], "raw": []}
    for name, url, path in (("sync", raw, "/sync-sleep?ms=2000"), ("ours", ours, "/sleep?ms=2000"),
                            ("raw", raw, "/sleep?ms=2000")):
        before = count(url)
        result = load(f"{url}{path}", 10, seconds=600, requests=100)
        means[name].append(result["mean_ms"])
        wait_count(url, before + 100, timeout=300)
    row("seeds: mean response, 2 s job (sync / ours = speed-up)", means["sync"], means["ours"],
        "~50x", " ms")
    row("seeds: mean response, raw BackgroundTasks / ours", means["raw"], means["ours"], "info",
        " ms")
    stack.stop(worker)


def hand_off_floors(stack: Stack, raw: str) -> None:
    """What handing every job of the 10 ms scenario to Redis costs the app at the least,
    with none of our code (``bench.apps.HandOffFloor``): one ~1 KB message per job,
    pipelined, or one compact entry per job in one ``LPUSH`` per batch. Info rows: they
    tell the 10 ms rows' ratio that no design publishing each job can pass here."""
    from bench.apps import FLOOR_KEYS

    client = redis.Redis.from_url(stack.redis.url)
    rps: dict[str, list[float]] = {"per-job": [], "compact": [], "plain": []}
    p99: dict[str, list[float]] = {name: [] for name in rps}
    for _ in range(ROUNDS):
        for name, path in (("per-job", "/floor-per-job"), ("plain", "/nojob"),
                           ("compact", "/floor-compact")):
            result = load(f"{raw}{path}", 32)
            rps[name].append(result["rps"])
            p99[name].append(result["p99_ms"])
            time.sleep(0.3)  # the last batch goes out (every 0.1 s)
            client.delete(*FLOOR_KEYS)
    for name, what in (("per-job", "a ~1 KB message per job, pipelined LPUSH"),
                       ("compact", "compact entries, one LPUSH per 0.1 s")):
        row(f"floor, 10 ms job handed to Redis as {what}: req/s vs same app without",
            rps[name], rps["plain"], "info")
        row(f"floor, {name}: p99 vs same app without the job", p99[name], p99["plain"],
            "info", " ms", higher_is_better=False)


def sustained_overload(stack: Stack, ours: str) -> None:
    """``OVERLOAD_SECONDS`` of 10 ms jobs at 32 connections, far more work than four
    inline slots can do: the jobs held past the pending limit spill over to the worker.
    Reports what was done during the load, the backlog at its end, where the jobs ran,
    and checks that every job completes afterwards."""
    from dispatcher.routes.celery.protocol import queue_depths

    client = redis.Redis.from_url(stack.redis.url)
    # Without the job first: run after the load, it would share the CPU with the
    # worker still finishing the backlog.
    plain = load(f"{ours}/nojob", 32, OVERLOAD_SECONDS)
    before = counts(ours)
    loaded = load(f"{ours}/sleep10", 32, OVERLOAD_SECONDS)
    after = counts(ours)
    queued = sum(queue_depths(client, ["celery"]).values()) + int(client.hlen("unacked"))
    accepted = int(loaded["requests"])
    started = time.monotonic()
    wait_count(ours, before["count"] + accepted, timeout=1800)
    drained = time.monotonic() - started
    final = counts(ours)
    row(f"10 ms job, sustained {OVERLOAD_SECONDS:g} s: req/s vs same app without the job",
        [loaded["rps"]], [plain["rps"]], ">= 0.90")
    row(f"10 ms job, sustained {OVERLOAD_SECONDS:g} s: p99 vs same app without the job",
        [loaded["p99_ms"]], [plain["p99_ms"]], "info", " ms", higher_is_better=False)
    done_inline = after["inline"] - before["inline"]
    done_worker = after["on_worker"] - before["on_worker"]
    ROWS.append((f"sustained {OVERLOAD_SECONDS:g} s: jobs accepted / done during the load "
                 "(inline + worker)", f"{accepted:,} / {done_inline + done_worker:,} "
                 f"({done_inline:,} + {done_worker:,})", "-", "-", "info"))
    ROWS.append(("sustained: backlog at the end (inline waiting + Celery queue)",
                 f"{after['inline_waiting']:,} + {queued:,}", "-", "-", "info"))
    ran_inline = final["inline"] - before["inline"]
    ran_worker = final["on_worker"] - before["on_worker"]
    ROWS.append(("sustained: every job completed; where they ran (inline / worker); "
                 "time to finish the backlog", f"{ran_inline + ran_worker:,} of {accepted:,}"
                 f" ({ran_inline:,} / {ran_worker:,}); {drained:.0f} s", "-", "-",
                 "all complete"))
    print(f"  sustained: {ROWS[-3:]}", flush=True)


def use_dispatcher(stack: Stack) -> None:
    """This process dispatches through the stack's Redis, as an API process would."""
    from dispatcher import DispatcherSettings, configure
    from dispatcher.core.registry import import_task_modules

    configure(DispatcherSettings(broker_url=stack.redis.url,  # defaults otherwise
                                 spool_path=stack.env["DISPATCH_SPOOL_PATH"],
                                 _env_file=None))  # type: ignore[call-arg]
    os.environ["DISPATCH_BROKER_URL"] = stack.redis.url
    import_task_modules(["bench.worker_tasks"])


def per_call_scenarios(stack: Stack) -> None:
    """Microseconds per .dispatch() on each route, and the API process's memory."""
    from bench.apps import noop_task
    from bench.worker_tasks import drain
    from dispatcher.store.embedded import free_port

    n = 3000
    for label, call in (("inline", lambda: noop_task.dispatch()),
                        ("celery", lambda: drain.dispatch())):
        costs = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(n):
                call()
            costs.append((time.perf_counter() - started) / n * 1e6)
        ROWS.append((f"per-call cost of .dispatch(), {label} route", spread(costs, " us"),
                     "-", "-", "info"))
        print(f"  per-call {label}: {spread(costs, ' us')}", flush=True)
    from dispatcher.testing import wait_for_inline_jobs

    wait_for_inline_jobs(60)
    redis.Redis.from_url(stack.redis.url).flushdb()

    def rss(app: str) -> float:
        url = stack.serve(app, free_port())
        load(f"{url}/noop", 4, 2.0)
        pid = stack.processes[-1].pid
        kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if line.startswith("VmRSS:"))
        stack.stop(stack.processes[-1])
        return kb / 1024

    row("API process RSS after load, MiB (with vs without dispatcher)",
        [rss("bench.apps:ours")], [rss("bench.apps:raw")], "info", " MiB",
        higher_is_better=False)


def main() -> None:
    stack = Stack()
    try:
        # Publishing, draining and latency are in the peers table (bench.peers.run).
        which = sys.argv[1:] or ["http", "percall"]
        if "http" in which:
            http_scenarios(stack)
        if "percall" in which:
            use_dispatcher(stack)
            per_call_scenarios(stack)
    finally:
        stack.close()
    print()
    header = ("scenario", "ours median (min-max)", "baseline median (min-max)", "ratio",
              "target")
    widths = [max(len(r[i]) for r in [header, *ROWS]) for i in range(5)]
    for line in [header, *ROWS]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
