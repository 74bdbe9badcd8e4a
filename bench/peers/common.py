"""What every peer module shares: the interface the agent drives, and the Redis keys.

Imported by the agent and by the peers' worker processes, in whichever venv the peer
runs (arq has one of its own), so nothing here imports the dispatcher or a peer's
library.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

#: This peer's own Redis database; the runner gives each peer another one.
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
#: Every no-op job INCRs this counter; the bench waits on it.
COUNTER = "bench:drained"
#: Every latency job RPUSHes (time it started - time it was sent), in seconds.
LATENCIES = "bench:latency"

T = TypeVar("T")


def wait_until(condition: Callable[[], bool], timeout: float = 120.0,
               pause: float = 0.0005, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(pause)


class Peer:
    """One peer, as the agent (``bench.peers.agent``) drives it.

    ``enqueue_one(n)`` sends ``n`` no-op jobs one call at a time; ``enqueue_batch(n)``
    sends them through the peer's batch API (``batch_api`` names it; ``None``: it has
    none). ``send_latency(sent)`` sends one latency job and returns what ``settled``
    needs to tell that the job was acknowledged (nothing left in flight).
    """

    batch_api: str | None = None
    counter: str = COUNTER
    latency_key: str = LATENCIES

    def worker_command(self, python: str, slots: int, index: int) -> list[str] | None:
        """The command of one worker process with ``slots`` execution slots (``index``
        tells apart the workers running at once); ``None``: the peer has no worker."""
        raise NotImplementedError

    def enqueue_one(self, n: int) -> None:
        raise NotImplementedError

    def enqueue_batch(self, n: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no batch API")

    def send_latency(self, sent: float) -> object:
        raise NotImplementedError

    def settled(self, handle: object) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        return None


class AsyncPeer(Peer):
    """A peer whose client API is asyncio: one event loop for the agent's lifetime,
    each call awaited before the next (the loop is entered once per ``enqueue_one``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()
