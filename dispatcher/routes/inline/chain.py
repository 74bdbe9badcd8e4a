"""What the inline executor queues: a chain of jobs run one after another by one
worker thread, with the future (if asked for) set once the last has run."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from ...core.job import Job

#: A chain, or a lone job without a future, queued as itself (a backlog of held jobs
#: is then one object each for the garbage collector to walk, not three).
Chain = tuple[list[Job], "concurrent.futures.Future[None] | None"] | Job


def chain_of(jobs: Sequence[Job], done: concurrent.futures.Future[None] | None) -> Chain:
    return jobs[0] if done is None and len(jobs) == 1 else (list(jobs), done)


def links(chain: Chain) -> tuple[list[Job], concurrent.futures.Future[None] | None]:
    """The chain's jobs and its future."""
    return ([chain], None) if isinstance(chain, Job) else chain


def due_at(chain: Chain) -> float | None:
    """When the chain's first job became due (None: an empty chain, nothing to hold)."""
    if isinstance(chain, Job):
        return chain.due_at
    jobs = chain[0]
    return jobs[0].due_at if jobs else None
