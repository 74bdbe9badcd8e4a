"""``make bench``: ours next to the hand-written baseline, in one run, on this machine.

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
#: Jobs queued for each drain (the peers table, ``bench.peers.run``, reads it too).
JOBS = int(os.environ.get("BENCH_JOBS", "10000"))
#: The inline executor's bound in the HTTP scenarios (``DISPATCH_INLINE_CONCURRENCY``).
INLINE_CONCURRENCY = 32
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
                        DISPATCH_TASK_MODULES="bench.worker_tasks",
                        DISPATCH_LOG_LEVEL="WARNING",
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


def count(url: str) -> int:
    return int(httpx.get(f"{url}/count", timeout=5).json()["count"])


def wait_count(url: str, expected: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while count(url) < expected:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url}: {count(url)} of {expected} jobs done")
        time.sleep(0.1)
    return time.monotonic() - started


def http_scenarios(stack: Stack) -> None:
    from dispatcher.store.embedded import free_port

    # Spill-over off: these rows compare the inline route itself with BackgroundTasks.
    ours = stack.serve("bench.apps:ours", free_port(),
                       DISPATCH_INLINE_CONCURRENCY=str(INLINE_CONCURRENCY),
                       DISPATCH_INLINE_MAX_PENDING="1000000")
    # The same app holding jobs for 1 s instead of 10: every 4 s burst outlasts the hold,
    # so the rest of it shows the steady state of a sustained overload (paced starts).
    held = stack.serve("bench.apps:ours", free_port(),
                       DISPATCH_INLINE_CONCURRENCY=str(INLINE_CONCURRENCY),
                       DISPATCH_INLINE_MAX_PENDING="1000000", DISPATCH_INLINE_MAX_HOLD="1")
    raw = stack.serve("bench.apps:raw", free_port())
    for url in (ours, held, raw):
        load(f"{url}/noop", 8, 1.0)  # warm up
    for connections in (2, 32):
        rps: dict[str, list[float]] = {"ours": [], "raw": []}
        p99: dict[str, list[float]] = {"ours": [], "raw": []}
        for _ in range(ROUNDS):
            for name, url in (("ours", ours), ("raw", raw)):
                result = load(f"{url}/noop", connections)
                rps[name].append(result["rps"])
                p99[name].append(result["p99_ms"])
        row(f"inline no-op job, {connections} conn: req/s", rps["ours"], rps["raw"], ">= 0.95")
        row(f"inline no-op job, {connections} conn: p99", p99["ours"], p99["raw"], "<= 1.10",
            " ms", higher_is_better=False)

    # Background work must not starve requests: a 10 ms sync job per request, against
    # the same app's endpoint without the job (and, for information, raw's).
    names = ("ours", "ours plain", "held", "held plain", "raw", "plain")
    rps = {name: [] for name in names}
    p99 = {name: [] for name in names}
    for _ in range(ROUNDS):
        for name, url, path in (("ours", ours, "/sleep10"), ("ours plain", ours, "/nojob"),
                                ("held", held, "/sleep10"), ("held plain", held, "/nojob"),
                                ("raw", raw, "/sleep10"), ("plain", raw, "/nojob")):
            before = count(url)
            result = load(f"{url}{path}", 32)
            rps[name].append(result["rps"])
            p99[name].append(result["p99_ms"])
            if "plain" not in name:  # every job completes: count them
                wait_count(url, before + int(result["requests"]))
    row("10 ms job, 32 conn: req/s vs same app without the job", rps["ours"],
        rps["ours plain"], ">= 0.90")
    row("10 ms job, 32 conn: p99 vs same app without the job", p99["ours"], p99["ours plain"],
        "<= 2.00", " ms", higher_is_better=False)
    # Bounded concurrency holds meanwhile: the most 10 ms jobs seen running at once.
    most = {name: float(httpx.get(f"{url}/count", timeout=5).json()["max_running"])
            for name, url in (("ours", ours), ("held", held), ("raw", raw))}
    if max(most["ours"], most["held"]) > INLINE_CONCURRENCY:
        raise SystemExit(f"inline jobs ran {most} at once, above the executor's bound of "
                         f"{INLINE_CONCURRENCY}")
    row(f"10 ms job: most jobs running at once (ours bound {INLINE_CONCURRENCY})",
        [max(most["ours"], most["held"])], [most["raw"]], f"<= {INLINE_CONCURRENCY}")
    row("10 ms job, burst past a 1 s hold: req/s vs same app without the job", rps["held"],
        rps["held plain"], "info")
    row("10 ms job, burst past a 1 s hold: p99 vs same app without the job", p99["held"],
        p99["held plain"], "info", " ms", higher_is_better=False)
    row("10 ms job, 32 conn: req/s vs raw plain endpoint", rps["ours"], rps["plain"], "info")
    row("10 ms job, 32 conn: p99 vs raw plain endpoint", p99["ours"], p99["plain"], "info",
        " ms", higher_is_better=False)
    row("10 ms job, 32 conn: raw BackgroundTasks req/s vs raw plain", rps["raw"],
        rps["plain"], "info")
    row("10 ms job, 32 conn: raw BackgroundTasks p99 vs raw plain", p99["raw"], p99["plain"],
        "info", " ms", higher_is_better=False)
    row("plain endpoint, 32 conn: ours (middleware) vs raw, req/s", rps["ours plain"],
        rps["plain"], "info")

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


def use_dispatcher(stack: Stack) -> None:
    """This process dispatches through the stack's Redis, as an API process would."""
    from dispatcher import DispatcherSettings, configure
    from dispatcher.core.registry import import_task_modules

    configure(DispatcherSettings(broker_url=stack.redis.url, log_level="WARNING",
                                 spool_path=stack.env["DISPATCH_SPOOL_PATH"],
                                 # per-call rows measure the inline route, not spill-over
                                 inline_max_pending=1_000_000,
                                 _env_file=None))  # type: ignore[call-arg]
    os.environ["DISPATCH_BROKER_URL"] = stack.redis.url
    import_task_modules(["bench.worker_tasks"])


def publish_scenarios(stack: Stack) -> None:
    from bench.worker_tasks import drain, raw_drain

    client = redis.Redis.from_url(stack.redis.url)
    n = 2000
    single: dict[str, list[float]] = {"ours": [], "raw": [], "many": []}
    client.flushdb()  # start from an empty Redis, whatever ran before
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            drain.dispatch()
        single["ours"].append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(n):
            raw_drain.apply_async()
        single["raw"].append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        drain.dispatch_many([() for _ in range(n * 5)])
        single["many"].append(n * 5 / (time.perf_counter() - started))
        client.flushdb()
    row("Celery publish: .dispatch() vs apply_async, jobs/s", single["ours"], single["raw"],
        ">= 1.0 (2.0)")
    row("Celery publish: dispatch_many vs apply_async, jobs/s", single["many"], single["raw"],
        ">= 20")


def like_for_like(stack: Stack) -> None:
    """The raw worker sends no task events, so ours does not either in the worker rows."""
    os.environ["DISPATCH_WORKER_EVENTS"] = "false"
    stack.env["DISPATCH_WORKER_EVENTS"] = "false"


def drain_scenarios(stack: Stack) -> None:
    from bench.worker_tasks import drain, raw_drain

    client = redis.Redis.from_url(stack.redis.url)

    def timed_drain(worker: list[str], publish: Callable[[], None]) -> tuple[float, float]:
        """Jobs/s from the worker's start to the last job, and between the 10th and the
        90th percent of the jobs (1,000 and 9,000 of 10,000: the steady state, without
        start-up)."""
        client.flushdb()
        publish()
        process = stack.start(worker)
        started = time.monotonic()
        marks: dict[int, float] = {}
        first, last = JOBS // 10, JOBS * 9 // 10
        while (done := int(client.get("bench:drained") or 0)) < JOBS:
            if time.monotonic() - started > 300:
                raise TimeoutError("drain did not finish")
            for mark in (first, last):
                if done >= mark and mark not in marks:
                    marks[mark] = time.monotonic()
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        for mark in (first, last):  # passed between two looks at the counter
            marks.setdefault(mark, time.monotonic())
        stack.stop(process)
        return JOBS / elapsed, (last - first) / max(marks[last] - marks[first], 1e-6)

    like_for_like(stack)
    ours_worker = [sys.executable, "-m", "worker", "--concurrency", "2", "--pool", "prefork"]
    raw_worker = [sys.executable, "-m", "celery", "-A", "bench.worker_tasks:raw", "worker",
                  "--concurrency", "2", "--pool", "prefork", "--loglevel", "WARNING"]
    drained: dict[str, list[float]] = {"ours": [], "raw": []}
    steady: dict[str, list[float]] = {"ours": [], "raw": []}
    for _ in range(max(1, ROUNDS - 1)):
        for name, worker, publish in (
            ("ours", ours_worker, lambda: drain.dispatch_many([() for _ in range(JOBS)])),
            ("raw", raw_worker, lambda: [raw_drain.apply_async() for _ in range(JOBS)]),
        ):
            whole, between = timed_drain(worker, publish)
            drained[name].append(whole)
            steady[name].append(between)
    row(f"drain {JOBS:,} no-op jobs, prefork -c 2 (incl. start-up), jobs/s", drained["ours"],
        drained["raw"], ">= 0.90")
    row("drain, steady state (10-90 % of the jobs), jobs/s", steady["ours"], steady["raw"],
        "info")


def latency_scenarios(stack: Stack) -> None:
    """Dispatch-to-start latency on an idle, warm worker: 200 sequential jobs each."""
    from bench.worker_tasks import latency, raw_latency

    client = redis.Redis.from_url(stack.redis.url)
    like_for_like(stack)

    def measure(worker: list[str], send: Callable[[float], None], key: str) -> list[float]:
        client.delete(key)
        process = stack.start(worker)
        time.sleep(3)  # warm: connected and idle
        for _ in range(200):
            before = client.llen(key)
            send(time.time())
            while client.llen(key) == before:
                time.sleep(0.0005)
            # Idle before the next job: the previous one acknowledged (kombu keeps
            # delivered, unacknowledged messages in the "unacked" hash), then 5 ms more.
            # Otherwise the next job arrives while the worker still finishes this one,
            # and the row measures that overlap rather than an idle worker's start.
            while client.hlen("unacked"):
                time.sleep(0.0005)
            time.sleep(0.005)
        stack.stop(process)
        return sorted(float(v) * 1000 for v in client.lrange(key, 0, -1))

    quantiles: dict[str, dict[str, list[float]]] = {
        "p50": {"ours": [], "raw": []}, "p95": {"ours": [], "raw": []}}
    for _ in range(ROUNDS):
        ours = measure([sys.executable, "-m", "worker", "--concurrency", "2"],
                       lambda sent: latency.dispatch(sent), "bench:latency:ours")
        raw = measure([sys.executable, "-m", "celery", "-A", "bench.worker_tasks:raw",
                       "worker", "--concurrency", "2", "--loglevel", "WARNING"],
                      lambda sent: raw_latency.apply_async((sent,)), "bench:latency:raw")
        for label, q in (("p50", 0.50), ("p95", 0.95)):
            quantiles[label]["ours"].append(ours[int(len(ours) * q)])
            quantiles[label]["raw"].append(raw[int(len(raw) * q)])
    for label, values in quantiles.items():
        row(f"dispatch-to-start latency {label}, idle worker", values["ours"], values["raw"],
            "<= 1.00", " ms", higher_is_better=False)


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
        which = sys.argv[1:] or ["http", "publish", "drain", "latency", "percall"]
        if "http" in which:
            http_scenarios(stack)
        if {"publish", "drain", "latency", "percall"} & set(which):
            use_dispatcher(stack)
        if "publish" in which:
            publish_scenarios(stack)
        if "drain" in which:
            drain_scenarios(stack)
        if "latency" in which:
            latency_scenarios(stack)
        if "percall" in which:
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
