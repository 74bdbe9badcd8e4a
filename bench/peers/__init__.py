"""``make bench``'s peers table: ours next to dramatiq, taskiq, arq, RQ, raw Celery (three
ways) and the Redis limits, in one run (``python -m bench.peers.run``; bench/README.md).

Each peer is a module with a ``Peer`` subclass (``bench.peers.common``) and the tasks
its worker imports. The runner (``bench.peers.run``) never imports a peer's library: it
starts the peer's workers and an agent process (``bench.peers.agent``) with the peer's
own interpreter, which sends the jobs and reports what it measured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    """One column of the table."""

    name: str
    #: ``module:Class`` of the peer (a ``bench.peers.common.Peer``).
    target: str
    #: The peer's own Redis database: no peer sees another's keys.
    db: int
    #: The venv whose interpreter runs the peer, relative to the repository;
    #: ``None``: the runner's own.
    venv: str | None = None
    #: Ours: the runner sets the ``DISPATCH_*`` variables for its agent and workers.
    dispatcher: bool = False
    #: A measuring probe, not a peer: run only when ``BENCH_PEERS`` names it.
    probe: bool = False
    #: Settings of a tuned row of ours (each named in its column): ``DISPATCH_*`` pairs
    #: for its agent and workers.
    settings: tuple[tuple[str, str], ...] = ()


PEERS: tuple[Spec, ...] = (
    Spec("ours", "bench.peers.ours:Ours", 1, dispatcher=True),
    Spec("ours-celery", "bench.peers.ours:Ours", 10, dispatcher=True,
         settings=(("DISPATCH_WORKER_CONSUMER", "celery"),)),
    Spec("celery", "bench.peers.celery_peer:AtLeastOnce", 2),
    Spec("celery-defaults", "bench.peers.celery_peer:Defaults", 3),
    Spec("celery+results", "bench.peers.celery_peer:WithResults", 4),
    Spec("dramatiq", "bench.peers.dramatiq_peer:Dramatiq", 5),
    Spec("taskiq", "bench.peers.taskiq_peer:Taskiq", 6),
    Spec("arq", "bench.peers.arq_peer:Arq", 7, venv=".venv-bench-arq"),
    Spec("rq", "bench.peers.rq_peer:Rq", 8),
    Spec("redis", "bench.peers.redis_limits:RedisLimits", 9),
)
