"""The chaos soak's harness: a fleet (2 API processes, 2 workers) on the fault-injection
suite's ``Cluster``, steady mixed traffic, a seeded chaos schedule, and the ledger's
verdict.

Everything runs at the product's default settings. Traffic goes round-robin to the two
APIs (``POST /tasks/{name}``), plus a share dispatched directly from this process; a
request refused by an API that is down is sent to the other one, as a load balancer
would. Every 5-20 s the schedule picks a fault from a shuffled bag of the kinds
available, so a short run sees each kind before any repeats.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import ClassVar

import httpx
import redis

from dispatcher import get_settings
from dispatcher.core.record import TERMINAL, decode_record
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.store import keys
from dispatcher.store.embedded import free_port
from tests.reliability.conftest import Cluster
from tests.sentinel_harness import SentinelSet, wait_until
from tests.support import Process

from . import tasks

#: What the traffic sends: kind -> (task, weight in the mix, run time range in ms).
MIX: dict[str, tuple[str, float, tuple[int, int]]] = {
    "inline": ("soak.inline", 0.44, (20, 200)),   # POST to an API, runs in that API
    # Inline too, but longer than the API's shutdown grace (10 s): a SIGTERM of its API
    # hands it over to Celery.
    "long": ("soak.inline", 0.01, (15_000, 25_000)),
    # Long enough that a worker usually holds some when it is killed (at the default
    # rate, about 60% of the workers' pool processes are busy).
    "celery": ("soak.celery", 0.45, (100, 600)),  # POST to an API, runs on a worker
    "direct": ("soak.celery", 0.10, (100, 600)),  # .dispatch() from this process
}
#: Every fault the schedule knows; ``sentinel_failover`` only on a Sentinel set, and
#: ``redis_stop`` only on the embedded server.
FAULTS = ("worker_kill", "api_restart", "redis_stop", "client_pause", "sentinel_failover")
#: Seconds between the starts of two faults (a fault still recovering delays the next).
GAP = (5.0, 20.0)
#: How long a request may take before its outcome counts as unknown.
REQUEST_TIMEOUT = 15.0


# --------------------------------------------------------------------------- redis


class EmbeddedCluster(Cluster):
    """The fault-injection suite's cluster: one embedded Redis (append-only file, fsync
    always), stopped and paused by the schedule."""

    kind: ClassVar[str] = "one embedded Redis (append-only, fsync always)"
    #: Faults this Redis cannot have, and why.
    unavailable: ClassVar[Mapping[str, str]] = {
        "sentinel_failover": "not available: one embedded Redis, no Sentinel "
                             "(SOAK_REDIS=sentinel runs the soak on a Sentinel set)"}

    def client(self, decode: bool = False) -> redis.Redis:
        """A client of the server (of the master, on a Sentinel set)."""
        return redis.Redis.from_url(self.redis.url, socket_timeout=10,
                                    decode_responses=decode)

    def failover(self) -> str:
        raise NotImplementedError("no Sentinel here")


@dataclass
class SentinelCluster(EmbeddedCluster):
    """The same cluster on a Redis Sentinel set (``tests.sentinel_harness``: a master,
    a replica, three Sentinels); processes find the master through the Sentinels."""

    sentinels: SentinelSet | None = field(init=False, default=None)

    kind: ClassVar[str] = "a Sentinel set (a master, a replica, three Sentinels)"
    unavailable: ClassVar[Mapping[str, str]] = {
        "redis_stop": "left out on a Sentinel set: its servers keep no append-only file, "
                      "and a crashed master's last writes, not yet replicated, are Redis's "
                      "to lose; the failover stands for the master's loss"}

    def __post_init__(self) -> None:
        folder = self.root / "redis"
        folder.mkdir()
        self.sentinels = SentinelSet(folder).start()
        self.use_broker(self.sentinels.env(), broker_url=self.sentinels.url,
                        sentinel_master=self.sentinels.master_name,
                        sentinel_password=self.sentinels.sentinel_password)

    def client(self, decode: bool = False) -> redis.Redis:
        assert self.sentinels is not None
        return redis.Redis(port=self.sentinels.master_port(), password=self.sentinels.password,
                           socket_timeout=10, decode_responses=decode)

    def failover(self) -> str:
        """``SENTINEL FAILOVER``, then wait until the replica, promoted, takes writes
        and every Sentinel agrees on it (the old master back as its replica)."""
        sentinels = self.sentinels
        assert sentinels is not None
        started = time.monotonic()
        new = 0

        def promoted() -> bool:
            nonlocal new
            new = sentinels.promoted(old) or 0
            return bool(new)

        # A Sentinel may accept the command and then abort (no good replica: one still
        # resynchronising after a pause of the master made them fail over by
        # themselves): asked again until a replica is promoted.
        for attempt in itertools.count(1):
            old = sentinels.failover()
            try:
                wait_until(promoted, "a promoted replica", 15)
                break
            except TimeoutError:
                if attempt == 4:
                    raise
        took = time.monotonic() - started
        sentinels.wait_ready(new, timeout=60)
        return (f"SENTINEL FAILOVER: master {old} -> {new}, promoted after {took:.1f}s, "
                f"taking writes with a replica after {time.monotonic() - started:.1f}s")

    def close(self) -> None:
        for process in self.workers + self.apis:
            if process.popen.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.popen.wait()
        if self.sentinels is not None:
            self.sentinels.stop()


# --------------------------------------------------------------------------- fleet


@dataclass
class WorkerSlot:
    """One worker "host": its current node name and process; a restart is a new
    incarnation, under the same node name (a supervisor on the same host) or a new one
    (a replacement host)."""

    index: int
    name: str
    process: Process
    incarnations: int = 1


@dataclass
class ApiSlot:
    """One API "host" behind the load balancer: a fixed port, restarted in place."""

    index: int
    port: int
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Fleet:
    """Workers and APIs on one ``Cluster`` (which stops all of them by pid at the end).

    ``failover`` is the Sentinel hook: a callable that makes Sentinel promote a replica
    and returns a line for the report. It stays ``None`` while the cluster has no
    Sentinel setup, and the chaos schedule then leaves that fault out.
    """

    def __init__(self, cluster: EmbeddedCluster, workers: int = 2, apis: int = 2,
                 concurrency: int = 2) -> None:
        self.cluster = cluster
        self.concurrency = concurrency
        self.failover: Callable[[], str] | None = (
            None if "sentinel_failover" in cluster.unavailable else cluster.failover)
        cluster.env.update(
            DISPATCH_TASK_MODULES="tests.soak.tasks",
            API_DATA_DIR=str(cluster.root / "api-data"),
        )
        self.workers = [WorkerSlot(i, f"soak{i}@%h", self._worker(i, f"soak{i}@%h"))
                        for i in range(workers)]
        self.apis = [ApiSlot(i, free_port()) for i in range(apis)]
        for slot in self.apis:
            self.start_api(slot.index)

    @property
    def capacity(self) -> int:
        """Celery jobs the fleet runs at once."""
        return len(self.workers) * self.concurrency

    def _worker(self, index: int, name: str) -> Process:
        spool = self.cluster.root / f"spool-worker{index}.sqlite3"
        return self.cluster.start_worker(self.concurrency, hostname=name,
                                         DISPATCH_SPOOL_PATH=str(spool))

    def kill_worker(self, index: int) -> None:
        self.cluster.kill_worker(self.workers[index].process)

    def restart_worker(self, index: int, new_name: bool) -> str:
        slot = self.workers[index]
        slot.incarnations += 1
        if new_name:
            slot.name = f"soak{index}-{slot.incarnations}@%h"
        slot.process = self._worker(index, slot.name)
        return slot.name

    def stop_api(self, index: int) -> int:
        """SIGTERM: uvicorn stops accepting, finishes its requests, and the dispatcher
        drains inline jobs for DISPATCH_SHUTDOWN_GRACE, handing the rest to Celery."""
        slot = self.apis[index]
        assert slot.process is not None
        code = slot.process.stop(signal.SIGTERM, timeout=60)
        slot.process = None
        return code

    def start_api(self, index: int) -> None:
        slot = self.apis[index]
        spool = self.cluster.root / f"spool-api{index}.sqlite3"
        slot.process = self.cluster.start_api(port=slot.port, DISPATCH_SPOOL_PATH=str(spool))

    def processes(self) -> list[Process]:
        return [s.process for s in self.workers] + [a.process for a in self.apis
                                                    if a.process is not None]


# --------------------------------------------------------------------------- chaos


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float          # seconds into the soak
    took: float        # fault plus recovery, seconds
    detail: str


class Chaos(threading.Thread):
    """The seeded schedule: every 5-20 s one fault, injected and recovered from before
    the next. Only this thread draws from its random generator, so a seed replays the
    same faults in the same order with the same parameters."""

    def __init__(self, fleet: Fleet, seed: int, begin: float, until: float,
                 say: Callable[[str], None], only: Sequence[str] = FAULTS) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.fleet = fleet
        self.rng = random.Random(f"chaos-{seed}")
        self.begin, self.until = begin, until
        self.say = say
        unknown = set(only) - set(FAULTS)
        assert not unknown, f"no such fault: {sorted(unknown)} (known: {', '.join(FAULTS)})"
        #: Faults left out, and why.
        self.left_out = {k: "not asked for (SOAK_FAULTS)" for k in FAULTS if k not in only}
        self.left_out.update({k: why for k, why in fleet.cluster.unavailable.items()
                              if k in only})
        if fleet.failover is None and "sentinel_failover" in only:
            self.left_out.setdefault("sentinel_failover", "not available (no failover hook)")
        self.kinds = [k for k in FAULTS if k not in self.left_out]
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self._bag: list[str] = []

    def run(self) -> None:
        try:
            next_at = self.begin + self.rng.uniform(*GAP)
            while next_at < self.until:
                if self.stopping.wait(max(0.0, next_at - time.monotonic())):
                    return
                kind = self._draw()
                started = time.monotonic()
                detail = getattr(self, kind)()
                fault = Fault(kind, started - self.begin, time.monotonic() - started, detail)
                self.faults.append(fault)
                self.say(f"[{fault.at:6.1f}s] {kind}: {detail} ({fault.took:.1f}s)")
                next_at = started + self.rng.uniform(*GAP)
        except BaseException as exc:  # surfaced by the test after the traffic stops
            self.error = exc

    def _draw(self) -> str:
        if not self._bag:
            self._bag = list(self.kinds)
            self.rng.shuffle(self._bag)
        return self._bag.pop()

    # Each fault: inject, wait as the schedule says, recover; returns a report line.

    def worker_kill(self) -> str:
        index = self.rng.randrange(len(self.fleet.workers))
        delay = self.rng.uniform(1.0, 3.0)
        new_name = self.rng.random() < 0.5
        old = self.fleet.workers[index].name.split("@")[0]
        self.fleet.kill_worker(index)
        time.sleep(delay)  # a supervisor's restart delay
        started = time.monotonic()
        name = self.fleet.restart_worker(index, new_name).split("@")[0]
        how = f"as {name}" if new_name else "under the same name"
        return (f"SIGKILL {old} (process group), restarted {how} after {delay:.1f}s, "
                f"ready in {time.monotonic() - started:.1f}s")

    def api_restart(self) -> str:
        index = self.rng.randrange(len(self.fleet.apis))
        started = time.monotonic()
        code = self.fleet.stop_api(index)
        stopped = time.monotonic() - started
        self.fleet.start_api(index)
        # uvicorn shuts down gracefully, then ends by the signal it was sent.
        ended = signal.Signals(-code).name if code < 0 else str(code)
        return (f"SIGTERM api{index} (exit {ended} after {stopped:.1f}s), restarted in "
                f"{time.monotonic() - started - stopped:.1f}s")

    def redis_stop(self) -> str:
        crash = self.rng.random() < 0.5
        down = self.rng.uniform(2.0, 6.0)
        server = self.fleet.cluster.redis
        if crash:
            server.shutdown_nosave()
        else:
            server.stop()
        time.sleep(down)
        server.start()
        return f"{'SHUTDOWN NOSAVE' if crash else 'SIGTERM'}, down {down:.1f}s"

    def client_pause(self) -> str:
        ms = self.rng.randint(2000, 6000)
        client = self.fleet.cluster.client()
        try:
            client.execute_command("CLIENT", "PAUSE", ms, "ALL")
            time.sleep(ms / 1000)
            deadline = time.monotonic() + 30
            while True:  # the pause ends by itself; wait until commands run again
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()
        return f"CLIENT PAUSE {ms} ms ALL"

    def sentinel_failover(self) -> str:
        assert self.fleet.failover is not None
        return self.fleet.failover()


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Accepted:
    """A job the fleet accepted: HTTP 202 with its id, or a handle from .dispatch()."""

    label: str
    kind: str
    task_id: str
    route: str
    via: str
    at: float  # seconds into the soak


@dataclass
class Traffic:
    """A steady rate of jobs, ``rate`` per second until ``until``, sent by a few threads
    so that one slow answer does not stall the rest. Bounded: at most ``rate`` times the
    duration, and a tick finding every sender busy is dropped and counted."""

    fleet: Fleet
    seed: int
    rate: float
    senders: int = 12
    accepted: dict[str, Accepted] = field(default_factory=dict)
    #: Request outcomes other than an acceptance, and retries elsewhere.
    counts: Counter[str] = field(default_factory=Counter)
    #: Labels whose request failed after it was sent (timeout, connection lost): the
    #: job may or may not exist; not accepted, not retried, reported apart.
    unconfirmed: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"traffic-{self.seed}")
        self.lock = threading.Lock()
        self.queue: Queue[tuple[int, str, str, int] | None] = Queue(maxsize=self.senders)
        self.threads: list[threading.Thread] = []
        self.begin = time.monotonic()

    def start(self, until: float) -> None:
        self.begin = time.monotonic()
        self.threads = [threading.Thread(target=self._send, name=f"soak-send{i}", daemon=True)
                        for i in range(self.senders)]
        self.threads.append(threading.Thread(target=self._schedule, args=(until,),
                                             name="soak-traffic", daemon=True))
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"traffic threads still running: {alive}"

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _schedule(self, until: float) -> None:
        kinds = list(MIX)
        weights = [MIX[k][1] for k in kinds]
        start, tick = time.monotonic(), 0
        try:
            while True:
                due = start + tick / self.rate
                if due >= until:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                kind = self.rng.choices(kinds, weights)[0]
                ms = self.rng.randint(*MIX[kind][2])
                try:
                    self.queue.put_nowait((tick, f"{kind}-{tick}", kind, ms))
                except Full:
                    self._count("tick dropped (every sender busy)")
                tick += 1
        finally:
            for _ in range(self.senders):
                self.queue.put(None)

    def _send(self) -> None:
        # A fresh connection per request: a refused connection is then a request that was
        # never sent, safe to send elsewhere.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=REQUEST_TIMEOUT, limits=limits) as client:
            while (item := self.queue.get()) is not None:
                tick, label, kind, ms = item
                try:
                    if kind == "direct":
                        self._dispatch(label, ms)
                    else:
                        self._post(client, tick, label, kind, ms)
                except Exception as exc:  # never let one request end the traffic
                    with self.lock:
                        self.counts[f"error {type(exc).__name__}"] += 1
                        self.errors.append(f"{label}: {exc!r}")

    def _accept(self, job: Accepted) -> None:
        with self.lock:
            self.accepted[job.label] = job

    def _post(self, client: httpx.Client, tick: int, label: str, kind: str, ms: int) -> None:
        apis = self.fleet.apis
        order = [apis[(tick + k) % len(apis)] for k in range(len(apis))]
        for attempt, slot in enumerate(order):
            try:
                answer = client.post(f"{slot.url}/tasks/{MIX[kind][0]}",
                                     json={"job": label, "ms": ms})
            except httpx.ConnectError:
                self._count("refused (API down), sent to the other")
                continue
            except httpx.HTTPError as exc:
                with self.lock:
                    self.counts[f"unconfirmed ({type(exc).__name__})"] += 1
                    self.unconfirmed[label] = type(exc).__name__
                return
            if answer.status_code != 202:
                with self.lock:
                    self.counts[f"HTTP {answer.status_code}"] += 1
                    self.errors.append(f"{label} via api{slot.index}: {answer.status_code} "
                                       f"{answer.text[:200]}")
                return
            body = answer.json()
            self._accept(Accepted(label, kind, body["task_id"], body["route"],
                                  f"api{slot.index}" + (" (retried)" if attempt else ""),
                                  time.monotonic() - self.begin))
            return
        self._count("not sent (every API refused)")

    def _dispatch(self, label: str, ms: int) -> None:
        handle = tasks.celery_job.dispatch(label, ms)
        self._accept(Accepted(label, "direct", handle.id, handle.route, "test process",
                              time.monotonic() - self.begin))


# --------------------------------------------------------------------------- verdict


def ledger_runs(ledger: Path) -> dict[str, list[tuple[str, str]]]:
    """label -> [(task id, route it ran on)] for every run the ledger holds."""
    runs: dict[str, list[tuple[str, str]]] = {}
    if not ledger.exists():
        return runs
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "done":
            runs.setdefault(parts[1], []).append((parts[2], parts[3]))
    return runs


def states(cluster: EmbeddedCluster, task_ids: list[str]) -> dict[str, str | None]:
    """Each job's state in its Redis record (None: no record)."""
    client = cluster.client()
    found: dict[str, str | None] = {}
    try:
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i:i + 500]
            for task_id, raw in zip(chunk, client.mget([keys.record(t) for t in chunk]),
                                    strict=True):
                record = decode_record(raw)
                found[task_id] = None if record is None else str(record["status"])
    finally:
        client.close()
    return found


@dataclass
class Verdict:
    """Per kind of traffic: what was accepted, ran, was lost or ran more than once."""

    runs: dict[str, list[tuple[str, str]]]
    state: dict[str, str | None]
    accepted: dict[str, Accepted]
    #: Why the wait ended.
    ended: str = "every job ran and ended"

    def missing(self) -> list[Accepted]:
        return [a for a in self.accepted.values() if a.label not in self.runs]

    def unfinished(self) -> list[Accepted]:
        return [a for a in self.accepted.values() if self.state.get(a.task_id) not in TERMINAL]

    def rows(self) -> list[dict[str, object]]:
        rows = []
        for kind in [*MIX, "total"]:
            jobs = [a for a in self.accepted.values() if kind in ("total", a.kind)]
            ran = [a for a in jobs if a.label in self.runs]
            rows.append({
                "kind": kind,
                "accepted": len(jobs),
                "completed": len(ran),
                "lost": len(jobs) - len(ran),
                "dup": sum(len(self.runs[a.label]) - 1 for a in ran),
                "not terminal": sum(1 for a in jobs if self.state.get(a.task_id) not in TERMINAL),
                "failed": sum(1 for a in jobs if self.state.get(a.task_id) == "FAILURE"),
                "on celery": sum(1 for a in ran if self.runs[a.label][-1][1] == "celery"),
                "wrong id": sum(1 for a in ran
                                if any(t != a.task_id for t, _ in self.runs[a.label])),
            })
        return rows


#: How long nothing may change (no run, no record state) before the wait gives up:
#: longer than a rescue (a heartbeat's expiry, then a sweep) or a lost publication's
#: re-queue (DISPATCH_REQUEUE_LOST_AFTER, then a sweep) that could still run a job.
#: Only the hour-long visibility timeout is longer, and a soak cannot wait for it.
QUIET = 90.0


def wait_for_the_end(cluster: EmbeddedCluster, accepted: dict[str, Accepted],
                     timeout: float) -> Verdict:
    """Until every accepted job ran (ledger) and its record is terminal (Redis); or the
    deadline; or ``QUIET`` seconds without any change. Each look re-reads only the
    records not terminal yet."""
    deadline = time.monotonic() + timeout
    state: dict[str, str | None] = {}
    seen: object = None
    changed = time.monotonic()
    while True:
        runs = ledger_runs(cluster.ledger)
        open_ids = [a.task_id for a in accepted.values() if state.get(a.task_id) not in TERMINAL]
        with contextlib.suppress(redis.RedisError, OSError):  # looked at again below
            state.update(states(cluster, open_ids))
        verdict = Verdict(runs, dict(state), accepted)
        missing, unfinished = verdict.missing(), verdict.unfinished()
        if not missing and not unfinished:
            return verdict
        now = time.monotonic()
        look = (sum(map(len, runs.values())), [state.get(a.task_id) for a in unfinished])
        if look != seen:
            seen, changed = look, now
        if now > deadline:
            verdict.ended = f"deadline ({timeout:.0f}s) passed"
            return verdict
        if now - changed > QUIET:
            verdict.ended = f"nothing changed for {QUIET:.0f}s"
            return verdict
        time.sleep(1.0)


def write_jobs(verdict: Verdict, path: Path) -> None:
    """Every accepted job with its runs and record state, one per line (for a post-mortem
    next to the processes' logs)."""
    with path.open("w") as out:
        out.write("label\tkind\ttask_id\troute\tvia\taccepted_at\truns\tstate\n")
        for a in sorted(verdict.accepted.values(), key=lambda a: a.at):
            runs = ",".join(route for _, route in verdict.runs.get(a.label, []))
            out.write(f"{a.label}\t{a.kind}\t{a.task_id}\t{a.route}\t{a.via}\t{a.at:.3f}\t"
                      f"{runs or '-'}\t{verdict.state.get(a.task_id) or '-'}\n")


def table(verdict: Verdict, chaos: Chaos, traffic: Traffic, seed: int, seconds: float,
          drained: float, bound: int) -> list[str]:
    """The report: the table per kind of traffic, then the faults and the requests."""
    lines = [f"chaos soak on {chaos.fleet.cluster.kind}: seed {seed}, {seconds:g} s of "
             f"traffic at {traffic.rate:g} jobs/s, "
             f"then waited {drained:.0f}s: {verdict.ended} (defaults: worker dead after "
             f"{get_settings().worker_dead_after:g}s)"]
    columns = ["accepted", "completed", "lost", "dup", "not terminal", "failed", "on celery",
               "wrong id"]
    header = f"{'traffic':<8} " + " ".join(f"{c:>12}" for c in columns)
    lines += [header, "-" * len(header)]
    for row in verdict.rows():
        lines.append(f"{row['kind']:<8} " + " ".join(f"{row[c]!s:>12}" for c in columns))
    for what, jobs in (("lost", verdict.missing()), ("not terminal", verdict.unfinished())):
        if jobs:
            by = Counter(f"{a.kind} {verdict.state.get(a.task_id) or 'no record'}"
                         for a in jobs)
            lines.append(f"{what}: " + ", ".join(f"{k} x{v}" for k, v in sorted(by.items()))
                         + f"; accepted {min(a.at for a in jobs):.1f}s to "
                         f"{max(a.at for a in jobs):.1f}s into the soak")
    if verdict.missing():
        lines.append("lost jobs in Redis:")
        lines += whereabouts(chaos.fleet.cluster,
                             [a.task_id for a in verdict.missing()])
    kinds = Counter(f.kind for f in chaos.faults)
    lines.append("faults: " + ", ".join(f"{k} x{kinds[k]}" for k in chaos.kinds)
                 + f"; duplicates allowed {bound}")
    for kind, why in chaos.left_out.items():
        lines.append(f"  {kind}: {why}, left out of the schedule")
    lines += [f"  [{f.at:6.1f}s] {f.kind}: {f.detail} ({f.took:.1f}s)" for f in chaos.faults]
    lines.append("recovery (from the logs): " + recoveries(chaos.fleet.cluster))
    ran = sum(1 for label in traffic.unconfirmed if label in verdict.runs)
    lines.append("requests: " + (", ".join(f"{k} {v}" for k, v in sorted(traffic.counts.items()))
                                 or "every one accepted by the first API asked")
                 + (f"; unconfirmed that ran anyway {ran}" if traffic.unconfirmed else ""))
    return lines


def whereabouts(cluster: EmbeddedCluster, task_ids: list[str], limit: int = 20) -> list[str]:
    """Where Redis has each job (for jobs that did not run or end): its record, its
    deliveries, its publication markers, whether a queue or kombu's unacked hash holds
    it, which live worker lists it as held; then the workers' heartbeats and the
    sightings of other kinds of worker that the rescue goes by."""
    lines: list[str] = []
    try:
        client = cluster.client(decode=True)
    except (redis.RedisError, OSError) as exc:
        return [f"  (could not reach Redis: {exc!r})"]
    try:
        now = time.time()
        queued = {json.loads(raw)["headers"]["id"] for key in queue_keys("celery")
                  for raw in client.lrange(key, 0, -1)}
        unacked: dict[str, list[str]] = {}
        for tag, raw in client.hgetall(keys.KOMBU_UNACKED).items():
            unacked.setdefault(json.loads(raw)[0]["headers"]["id"], []).append(tag)
        index = dict(client.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1, withscores=True))
        workers = client.zrange(keys.WORKERS, 0, -1, withscores=True)
        held = {host: client.smembers(keys.held(host)) for host, _ in workers}
        for task_id in task_ids[:limit]:
            record = decode_record(client.get(keys.record(task_id)))
            markers = {k.rsplit(":", 1)[-1]: (v if v == "1" else "unstarted")
                       for k in client.scan_iter(keys.marker(f"{task_id}:*"))
                       if (v := client.get(k)) is not None}
            tags = unacked.get(task_id, [])
            taken = [f"{tag} taken {now - (index.get(tag) or now):.0f}s ago, held by "
                     f"{[h for h, t in held.items() if tag in t] or 'none'}" for tag in tags]
            lines.append(
                f"  {task_id}: record {record['status'] if record else None}, deliveries "
                f"{client.get(keys.runs(task_id))}, publications {markers or '-'}, "
                f"queued {task_id in queued}, unacked {taken or '-'}")
        for host, at in workers:
            alive = client.exists(keys.worker(host))
            lines.append(f"  worker {host}: last beat {now - at:.0f}s ago"
                         f"{'' if alive else ' (dead)'}, holds {len(held[host])}")
        foreign = client.hgetall(keys.FOREIGN_WORKERS)
        lines.append("  other kinds of worker: " + (", ".join(
            f"{q or 'last look'} until {now - float(t):+.0f}s ago" for q, t in foreign.items())
            or "never looked"))
    except (redis.RedisError, ValueError, KeyError) as exc:
        lines.append(f"  (could not read Redis: {exc!r})")
    finally:
        client.close()
    return lines


def recoveries(cluster: Cluster) -> str:
    """What the fleet's logs say it recovered: jobs re-queued from dead workers, jobs run
    again after their pool process died, inline jobs an API handed over as it stopped,
    spooled jobs relayed after an outage."""
    text = "\n".join(p.output() for p in cluster.workers + cluster.apis)
    handed = sum(int(n) for n in re.findall(r"handed (\d+) unfinished inline job", text))
    relayed = sum(int(n) for n in re.findall(r"relayed (\d+) spooled job", text))
    return (f"re-queued from a dead worker {text.count('from a dead worker')}, "
            f"run again after a pool death {text.count('its process died while running')}, "
            f"inline handed to Celery {handed}, relayed from a spool {relayed}")


def duplicate_bound(chaos: Chaos) -> int:
    """Runs a fault can repeat: the jobs in flight where it strikes, which may have
    written their ledger line without the acknowledgement or hand-over reaching Redis.
    A worker kill: that worker's pool; an API SIGTERM: its inline executor (jobs
    running past the grace are handed to Celery); a Redis outage or pause, or a
    failover: every worker's pool (acknowledgements lost with the connection)."""
    fleet = chaos.fleet
    per_kind = {"worker_kill": fleet.concurrency,
                "api_restart": get_settings().inline_concurrency,
                "redis_stop": fleet.capacity, "client_pause": fleet.capacity,
                "sentinel_failover": fleet.capacity}
    return sum(per_kind[f.kind] for f in chaos.faults)
