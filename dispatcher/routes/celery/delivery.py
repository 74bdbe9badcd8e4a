"""A delivery's bookkeeping, shared by the worker's transport (which writes it as the
message is taken) and the pool process (which reads what was counted, or counts
itself for a message the transport did not count)."""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from ...store import keys
from ...store.scripts import COUNT_RUN
from .protocol import HEADER
from .recovery import started_commands

#: The header that carries a delivery's bookkeeping to the pool process:
#: ``[runs, cancelled]`` (runs: deliveries counted so far, None when not counted).
DELIVERY_HEADER = "dispatch_delivery"


def delivery_counts(source: Any) -> tuple[int | None, bool] | None:
    """What this transport counted for a delivery, read from a message's headers (a
    dict) or a Celery request (attributes): ``(runs, cancelled)``, runs None when not
    counted on the broker; None when the transport counted nothing."""
    delivery = (source.get(DELIVERY_HEADER) if isinstance(source, dict)
                else getattr(source, DELIVERY_HEADER, None))
    if not (isinstance(delivery, list) and len(delivery) == 2):
        return None
    runs, cancelled = delivery
    return (None if runs is None else int(runs)), bool(cancelled)


def delivery_commands(publication: str, runs_ttl: int, *, held: bool = False,
                      pending: tuple[str, int] | None = None) -> list[tuple[Any, ...]]:
    """A delivery's bookkeeping (``publication``: ``<job id>:<attempt>``): marked
    started, its cancel mark read, and (``runs_ttl`` above 0) the delivery counted
    (``lua/count_delivery.lua``; ``held``: taken by the consumer, not started yet). The
    cancel mark's reply is the third, the count the fourth. ``lua/take.lua`` does the
    same in its script. The count is sent as the script's source, not its digest: in a
    transaction an unknown digest would only fail at ``EXEC``. ``pending``: the job's
    PENDING record and its lifetime, written last unless it has one (a batch job's is
    left to the take, as in ``lua/take_one.lua``)."""
    job_id = publication.rpartition(":")[0]
    commands = [*started_commands(publication), ("EXISTS", keys.cancel(job_id))]
    if runs_ttl > 0:
        commands.append(("EVAL", COUNT_RUN.source, 2, keys.runs(job_id), keys.taken(job_id),
                         runs_ttl, "1" if held else "0"))
    if pending is not None:
        commands.append(("SET", keys.record(job_id), pending[0], "NX", "EX", pending[1]))
    return commands


def publication_of(headers: Any) -> str | None:
    """``<job id>:<attempt>`` of a message of ours due now; None for another."""
    if not isinstance(headers, dict) or headers.get("eta"):
        return None
    meta, job_id = headers.get(HEADER), headers.get("id")
    if not isinstance(meta, dict) or not isinstance(job_id, str):
        return None
    return f"{job_id}:{meta.get('attempt') or 1}"


def uncount(client: redis.Redis, job_id: str, message: Any) -> None:
    """Take back the run this transport counted for ``message``, which will not run
    here (handed back for another worker), and its taken mark. Best effort: a count
    left over reads as one death of the job, far from the poison threshold."""
    counts = delivery_counts(getattr(message, "headers", None))
    if counts is None or counts[0] is None:
        return
    with contextlib.suppress(redis.RedisError), client.pipeline() as undo:
        undo.decr(keys.runs(job_id))
        undo.delete(keys.taken(job_id))
        undo.execute()
