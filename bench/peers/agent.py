"""One peer's client side, in a process of its own and with the peer's own interpreter:
``python -m bench.peers.agent module:Class MODE [N] [--barrier]``.

Modes (the last stdout line is ``RESULT {json}``):

- ``describe``: the worker commands (two slots; indexes 0-3) and the batch API's name;
- ``one N`` / ``batch N``: send N no-op jobs one call at a time / through the batch API,
  after a warm-up of 20 (no worker runs); jobs/s, and the start and end times;
  ``--barrier``: print ``READY`` after the warm-up and wait for a line on stdin;
- ``fill N``: queue N no-op jobs, by the batch API if there is one;
- ``e2e N``: with a worker running: one job to warm it, then N jobs one at a time;
  jobs/s from the first send to the counter reaching N (or jobs done by
  ``BENCH_CAP_SECONDS``, 60 by default, after the first send);
- ``latency N``: with a worker running: N latency jobs, each sent once the previous
  one started, was acknowledged and 5 ms more passed; p50 and p95 in ms.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping

import redis

from bench.peers.common import URL, Peer, wait_until

WARM_UP = 20
#: An end-to-end run still going after this many seconds is cut short (as the drain).
CAP = float(os.environ.get("BENCH_CAP_SECONDS", "60"))


def load(target: str) -> Peer:
    module, _, name = target.partition(":")
    peer: Peer = getattr(importlib.import_module(module), name)()
    return peer


def timed(send: object, n: int, barrier: bool) -> dict[str, float]:
    assert callable(send)
    send(WARM_UP)
    if barrier:
        print("READY", flush=True)
        sys.stdin.readline()
    start, began = time.time(), time.perf_counter()
    send(n)
    elapsed = time.perf_counter() - began
    return {"rate": n / elapsed, "start": start, "end": start + elapsed}


def counted(client: redis.Redis, key: str, n: int, timeout: float = 600) -> None:
    wait_until(lambda: int(client.get(key) or 0) >= n, timeout, 0.005, f"{n} jobs done")


def end_to_end(peer: Peer, client: redis.Redis, n: int) -> dict[str, float]:
    peer.enqueue_one(1)
    counted(client, peer.counter, 1)  # the worker is up and warm
    time.sleep(0.5)
    client.set(peer.counter, 0)
    began = time.perf_counter()
    peer.enqueue_one(n)
    with contextlib.suppress(TimeoutError):
        counted(client, peer.counter, n, max(0.0, CAP - (time.perf_counter() - began)))
    done = min(n, int(client.get(peer.counter) or 0))
    return {"rate": done / (time.perf_counter() - began), "capped": float(done < n)}


def latencies(peer: Peer, client: redis.Redis, n: int) -> dict[str, float]:
    def one() -> None:
        before = client.llen(peer.latency_key)
        handle = peer.send_latency(time.time())
        wait_until(lambda: client.llen(peer.latency_key) > before, what="the job's start")
        wait_until(lambda: peer.settled(handle), what="the job's acknowledgement")
        time.sleep(0.005)

    one()  # warm: the worker is up, connected and has run a job
    time.sleep(1.0)
    client.delete(peer.latency_key)
    for _ in range(n):
        one()
    values = sorted(float(v) * 1000 for v in client.lrange(peer.latency_key, 0, -1))
    return {"p50": statistics.median(values), "p95": values[int(len(values) * 0.95)]}


def main(argv: list[str]) -> int:
    target, mode, *rest = argv
    barrier = "--barrier" in rest
    n = int(next((a for a in rest if a.isdigit()), "0"))
    peer = load(target)
    client = redis.Redis.from_url(URL)
    result: Mapping[str, object]
    try:
        if mode == "describe":
            workers = [peer.worker_command(sys.executable, 2, i) for i in range(4)]
            result = {"workers": workers, "batch": peer.batch_api}
        elif mode == "one":
            result = timed(peer.enqueue_one, n, barrier)
        elif mode == "batch":
            result = timed(peer.enqueue_batch, n, barrier)
        elif mode == "fill":
            (peer.enqueue_batch if peer.batch_api else peer.enqueue_one)(n)
            result = {}
        elif mode == "e2e":
            result = end_to_end(peer, client, n)
        elif mode == "latency":
            result = latencies(peer, client, n)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        peer.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
