"""dramatiq with its Redis broker (``dramatiq[redis]``), default middleware, JSON.

The worker is ``dramatiq bench.peers.dramatiq_peer --processes 1 --threads 2``: one
worker process with two worker threads (dramatiq runs actors in threads; its docs tell
to raise ``--processes`` to use more cores). Messages are acknowledged after the actor
ran (the broker keeps fetched messages in a per-worker ``__acks__`` set until then).
``group(...).run()`` enqueues each message with its own call, so dramatiq has no batch
enqueue: the batch row is empty.
"""

from __future__ import annotations

import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.peers.common import COUNTER, LATENCIES, URL, Peer

broker = RedisBroker(url=URL)  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(URL)


@dramatiq.actor(actor_name="drain")
def drain() -> None:
    _client.incr(COUNTER)


@dramatiq.actor(actor_name="latency")
def latency(sent: float) -> None:
    _client.rpush(LATENCIES, time.time() - sent)


class Dramatiq(Peer):
    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        return [python, "-m", "dramatiq", __name__, "--processes", "1", "--threads",
                str(slots)]

    def enqueue_one(self, n: int) -> None:
        send = drain.send
        for _ in range(n):
            send()

    def send_latency(self, sent: float) -> object:
        return latency.send(sent)

    def settled(self, handle: object) -> bool:
        # Redis drops a set once empty: no __acks__ key, nothing fetched and not acked.
        return not _client.keys("dramatiq:__acks__.*")
