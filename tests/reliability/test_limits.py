"""Flow control across a fleet at default settings: 2 API processes dispatch a
rate-limited task (half inline in the APIs, half to Celery) a little faster than its
limit while 3 workers run it; no window of the limit's length holds more starts than
the limit, and every job runs once."""

from __future__ import annotations

import collections
import itertools
import math
import time
import uuid

import httpx
import pytest

from dispatcher.runtime.container import current

from . import tasks
from .conftest import Cluster, report, scale


@pytest.mark.parametrize("cluster", ["defaults"], indirect=True)
def test_a_rate_limit_holds_over_two_apis_and_three_workers(cluster: Cluster) -> None:
    limit = tasks.PACED_PER_SECOND
    for n in range(3):
        cluster.start_worker(2, hostname=f"paced{n}@%h")
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
