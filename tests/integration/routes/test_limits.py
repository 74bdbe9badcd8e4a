"""Rate and concurrency limits across processes and both routes, against real Redis,
the session worker and processes started here: jobs over a limit wait, none is
dropped. (A SIGKILLed worker's slot is in ``tests/reliability/test_limits.py``.)"""

from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
import uuid
from typing import Any

import redis

from dispatcher import cancel
from dispatcher.runtime.container import current
from dispatcher.store import keys
from tests.integration import sample_tasks as samples
from tests.support import ROOT, wait_until

#: Dispatches 100 jobs of a rate-limited task to Celery from a second process, once the
#: test says go (the test process dispatches 100 inline at the same moment).
RATE_SCRIPT = """
import json, sys, time
from dispatcher import configure
from tests.integration import sample_tasks as samples
configure()
key = sys.argv[1]
print("ready", flush=True)
while samples.ledger().get(key + ":go") is None:
    time.sleep(0.005)
handles = samples.rate_limited.options(route="celery").dispatch_many([(key,)] * 100)
print(json.dumps([h.id for h in handles]), flush=True)
"""


def _finished(ids: list[str]) -> list[dict[str, Any]]:
    """The records of ``ids`` once every one is finished (waits for them)."""
    store = current().records

    def done() -> bool:
        return all(r is not None and r["status"] in {"SUCCESS", "FAILURE"}
                   for r in store.load_many(ids))

    wait_until(done, f"{len(ids)} jobs finished", timeout=180)
    return [r for r in store.load_many(ids) if r is not None]


def test_a_rate_limit_holds_across_processes_and_both_routes(
        broker: str, service_env: dict[str, str]) -> None:
    key = f"rate:{uuid.uuid4()}"
    other = subprocess.Popen([sys.executable, "-c", RATE_SCRIPT, key], env=service_env,
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready"
        samples.ledger().set(f"{key}:go", "1")
        inline = samples.rate_limited.options(route="inline").dispatch_many([(key,)] * 100)
        celery_ids = json.loads(other.stdout.readline())
        assert other.wait(timeout=60) == 0
    finally:
        if other.poll() is None:
            other.kill()
    ids = [h.id for h in inline] + celery_ids
    records = _finished(ids)
    assert {r["status"] for r in records} == {"SUCCESS"}
    runs = samples.entries(key)
    assert sorted(str(e["job"]) for e in runs) == sorted(ids)  # each ran, once
    assert {e["route"] for e in runs} == {"inline", "celery"}
    starts = sorted(float(r["started_at"]) for r in records)
    per_window = collections.Counter(math.floor(t) for t in starts)
    assert max(per_window.values()) <= 20, per_window
    # Not only aligned windows: no 21 starts within any 1 s.
    assert all(later - earlier >= 1.0 - 1e-6
               for earlier, later in zip(starts, starts[20:], strict=False))
    ran = [float(e["t"]) for e in runs]  # the tasks' own clocks, a moment after admission
    print(f"\n200 jobs at 20/s from 2 processes took {starts[-1] - starts[0]:.1f} s; "
          f"starts per aligned second: max {max(per_window.values())}; by the tasks' "
          f"clocks: max {max(collections.Counter(math.floor(t) for t in ran).values())}")


def test_a_concurrency_limit_per_key_holds_across_both_routes(broker: str) -> None:
    key = f"conc:{uuid.uuid4()}"
    # Grouped by customer: without the limit the executor's threads would all take the
    # same customer's jobs at once.
    calls = [(key, f"c{n // 10}", 0.2) for n in range(50)]
    inline = samples.per_customer.options(route="inline").dispatch_many(calls[::2])
    celery = samples.per_customer.options(route="celery").dispatch_many(calls[1::2])
    records = _finished([h.id for h in [*inline, *celery]])
    assert {r["status"] for r in records} == {"SUCCESS"}
    runs = samples.entries(key)
    assert len(runs) == 50
    assert max(int(str(e["running"])) for e in runs) <= 2
    client = redis.Redis.from_url(broker)
    for customer in {c for _, c, _ in calls}:  # every slot given back
        slots = keys.slots(f"samples.per_customer\x1f{customer}")
        wait_until(lambda slots=slots: client.zcard(slots) == 0, f"{customer}'s slots free")
    print(f"\nmost jobs running at once over all customers: "
          f"{max(int(str(e['everyone'])) for e in runs)}")


def test_a_job_waiting_for_its_limit_can_be_cancelled(broker: str) -> None:
    client = redis.Redis.from_url(broker)
    first = samples.hourly.options(route="celery").dispatch(1)
    assert first.get(timeout=60) == 1
    waiting = samples.hourly.options(route="celery").dispatch(2)  # refused for an hour
    wait_until(lambda: client.zscore(keys.DELAYED, f"{waiting.id}:1") is not None,
               "the second job waiting in the delay store")
    assert waiting.state() == "PENDING"
    assert cancel(waiting.id) is True
    assert waiting.state() == "REVOKED"
    assert client.zscore(keys.DELAYED, f"{waiting.id}:1") is None


def test_a_timed_out_attempt_keeps_its_slot_until_its_call_ends(broker: str) -> None:
    """``concurrency=1``: the retry of a timed-out attempt waits for the hung call, even
    on a worker with a free pool process."""
    key = f"hangs:{uuid.uuid4()}"
    handle = samples.hangs_once.options(route="celery").dispatch(key)
    assert handle.get(timeout=60) is None
    labels = [str(e["label"]) for e in samples.entries(key)]
    assert labels == ["start", "hung call ended", "start"]
