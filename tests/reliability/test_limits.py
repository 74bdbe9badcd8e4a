"""Flow control across a fleet at default settings: 2 API processes dispatch a
rate-limited task (half inline in the APIs, half to Celery) a little faster than its
limit while 3 workers run it; no window of the limit's length holds more starts than
the limit, and every job runs once. A worker SIGKILLed while holding a concurrency
slot frees it when its lease runs out."""

from __future__ import annotations

import collections
import itertools
import math
import time
import uuid

import httpx
import pytest
import redis

from dispatcher.runtime.container import current
from dispatcher.store import keys
from tests.support import wait_until

from . import tasks
from .conftest import Cluster, report, scale


@pytest.mark.parametrize("cluster", ["defaults"], indirect=True)
def test_a_rate_limit_holds_over_two_apis_and_three_workers(cluster: Cluster) -> None:
    limit = tasks.PACED_PER_SECOND
    cluster.start_workers([f"paced{n}@%h" for n in range(3)])
    apis = [cluster.start_api(app="tests.reliability.limits_app:app") for _ in range(2)]
    seconds = scale(60, 8)
    offered = limit + 2  # per second: more than the limit, so jobs have to wait
    ids: dict[str, str] = {}
    routes = itertools.cycle(["inline", "celery"])
    with httpx.Client(timeout=30) as client:
        start = time.monotonic()
        for n in range(seconds * offered):
            # Paced by the clock, not by sleeping a fixed time between requests.
            ahead = start + n / offered - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            job = f"paced-{n}-{uuid.uuid4().hex[:6]}"
            api = apis[n % 2]
            answer = client.post(f"{api.url}/paced/{job}", params={"route": next(routes)})
            assert answer.status_code == 200, answer.text
            ids[job] = answer.json()["id"]
    done = cluster.wait_done(set(ids), timeout=seconds * 3 + 60)
    missing = set(ids) - set(done)
    assert not missing, cluster.diagnose(missing)
    records = current().records.load_many(list(ids.values()))
    starts = sorted(float(r["started_at"]) for r in records if r is not None)
    assert len(starts) == len(ids)
    per_window = collections.Counter(math.floor(t) for t in starts)
    # Every window of one second, aligned or not, holds at most the limit.
    assert max(per_window.values()) <= limit, per_window
    assert all(later - earlier >= 1.0 - 1e-6
               for earlier, later in zip(starts, starts[limit:], strict=False))
    duplicates = sum(done[j] - 1 for j in ids)
    report(f"rate limit {limit}/s, {offered}/s offered for {seconds} s, 2 APIs + 3 workers",
           len(ids), len(set(done) & set(ids)), len(missing), duplicates,
           f"max {max(per_window.values())} starts in a second")
    assert duplicates == 0


@pytest.mark.parametrize("cluster", ["defaults"], indirect=True)
def test_a_worker_sigkilled_holding_a_slot_frees_it_within_the_lease(
        cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis.url)
    slots = keys.slots("rel.one_slot")
    holder = cluster.start_worker(1, hostname="holder@%h")
    held = f"held-{uuid.uuid4().hex[:6]}"
    tasks.one_slot.dispatch(held, 600_000)
    wait_until(lambda: cluster.events("start")[held], "the holder running")
    cluster.start_worker(1, hostname="waiter@%h")
    job = f"waits-{uuid.uuid4().hex[:6]}"
    waiting = tasks.one_slot.dispatch(job, 0)
    # Refused by the other worker, it waits in the delay store (not in a worker).
    wait_until(lambda: client.zscore(keys.DELAYED, f"{waiting.id}:1") is not None,
               "the second job waiting for the slot")
    seconds, micros = client.time()
    cluster.kill_worker(holder)
    killed_at = seconds + micros / 1e6
    (_, expiry), = client.zrange(slots, 0, -1, withscores=True)
    lease = current().settings.concurrency_lease
    assert expiry <= killed_at + lease  # renewed at most one lease ahead
    done = cluster.wait_done({job}, timeout=lease + 60)
    assert done[job] == 1, cluster.diagnose({job})
    record = waiting.record()
    assert record is not None
    started = float(record["started_at"])
    assert started >= expiry  # not before the dead holder's lease ran out
    report(f"worker SIGKILLed holding a slot (lease {lease:g} s)", 1, 1, 0, 0,
           f"slot free {expiry - killed_at:.1f} s after the kill; waiting job started "
           f"{started - expiry:.2f} s later")
