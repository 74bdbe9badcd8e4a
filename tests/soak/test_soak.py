"""A chaos soak at default settings: 2 API processes and 2 workers under steady mixed
traffic while a seeded schedule kills workers, restarts APIs, stops and pauses Redis.

``SOAK_SECONDS`` (30 in ``make test``, 600 in ``make soak``) is how long traffic and
faults go on; ``SOAK_SEED`` replays a schedule (printed at the start and in the
table); ``SOAK_RATE`` is the traffic in jobs per second (default 12); ``SOAK_FAULTS``
(comma-separated) narrows the schedule to some kinds of fault (default: all of them);
``SOAK_REDIS=sentinel`` runs the fleet on a Redis Sentinel set instead of one embedded
server, with failovers in the schedule.
Every accepted job, with its runs and record state, is written to ``jobs.tsv`` in the
test's temporary directory, next to the processes' logs and the ledger.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from dispatcher import get_settings
from tests import summary

from .harness import (
    FAULTS,
    Chaos,
    EmbeddedCluster,
    Fleet,
    SentinelCluster,
    Traffic,
    duplicate_bound,
    table,
    wait_for_the_end,
    write_jobs,
)

SECONDS = float(os.environ.get("SOAK_SECONDS") or 30)
SEED = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1_000_000))
RATE = float(os.environ.get("SOAK_RATE") or 12)
REDIS = os.environ.get("SOAK_REDIS") or "embedded"
ONLY = [k.strip() for k in (os.environ.get("SOAK_FAULTS") or ",".join(FAULTS)).split(",")
        if k.strip()]
#: After the last fault: a killed worker's jobs come back once its heartbeat expires
#: (DISPATCH_WORKER_DEAD_AFTER, 30 s) and a live worker's next sweep finds them.
DRAIN = 240.0


def say(line: str) -> None:
    print(line, flush=True)


def test_chaos_soak(tmp_path: Path) -> None:
    kinds = {"embedded": EmbeddedCluster, "sentinel": SentinelCluster}
    assert REDIS in kinds, f"SOAK_REDIS is one of {', '.join(kinds)}"
    cluster = kinds[REDIS](tmp_path, short=False)
    say(f"chaos soak: seed {SEED} (SOAK_SEED={SEED} replays this schedule), "
        f"{SECONDS:g} s at {RATE:g} jobs/s, on {cluster.kind}")
    try:
        settings = get_settings()
        assert (settings.visibility_timeout, settings.worker_dead_after,
                settings.requeue_lost_after) == (3600, 30, 60), "the soak runs at defaults"
        fleet = Fleet(cluster)
        begin = time.monotonic()
        until = begin + SECONDS
        traffic = Traffic(fleet, SEED, RATE)
        traffic.start(until)
        chaos = Chaos(fleet, SEED, begin, until, say, ONLY)
        chaos.start()
        chaos.join(SECONDS + 300)  # a fault started before the end recovers first
        chaos.stopping.set()
        traffic.join(max(0.0, until - time.monotonic()) + 60)
        if chaos.error is not None:
            raise chaos.error
        assert not chaos.is_alive(), "the last fault did not end"
        ended = time.monotonic()

        verdict = wait_for_the_end(cluster, traffic.accepted, DRAIN)
        drained = time.monotonic() - ended
        write_jobs(verdict, tmp_path / "jobs.tsv")
        bound = duplicate_bound(chaos)
        lines = table(verdict, chaos, traffic, SEED, SECONDS, drained, bound)
        for line in [*lines, ""]:
            summary.add("soak", line)
        for line in lines:
            say(line)

        total = verdict.rows()[-1]
        missing = {a.label for a in verdict.missing()}
        unfinished = [(a.label, a.task_id, verdict.state.get(a.task_id))
                      for a in verdict.unfinished()]
        assert total["accepted"] >= 0.5 * RATE * SECONDS, "the traffic fell short"
        assert not missing, cluster.diagnose(missing)
        assert not unfinished, f"accepted jobs not in a terminal state: {unfinished[:20]}"
        assert total["failed"] == 0, [a for a in traffic.accepted.values()
                                      if verdict.state.get(a.task_id) == "FAILURE"][:20]
        assert total["wrong id"] == 0, "a run carried another id than the accepted one"
        assert isinstance(total["dup"], int) and total["dup"] <= bound
        assert not [k for k in traffic.counts if k.startswith(("HTTP 5", "error"))], \
            traffic.errors[:20]
        dead = [p.log.name for p in fleet.processes() if p.popen.poll() is not None]
        assert not dead, f"processes of the fleet died: {dead}"
    finally:
        cluster.close()
