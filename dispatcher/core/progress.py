"""``progress()``: a running task tells operators how far it got, on either route.

The latest report lands in the job's record (``GET /tasks/{id}``, the dashboard, the
``/tasks/{id}/events`` stream); reports are coalesced before they reach Redis, so a
task may report as often as it likes.
"""

from __future__ import annotations

from .context import attempt_var
from .errors import TaskCancelled


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"progress(): {name} must be a number, got {value!r}")
    return value


def progress(current: float, total: float | None = None, message: str = "") -> bool:
    """Report ``current`` out of ``total`` (and a short ``message``) for the running job.

    Returns False, doing nothing, when called outside a dispatched job (for example when
    the task function is called directly), so task code needs no guard. Raises
    ``ValueError`` naming the argument for a negative or non-numeric ``current``, a
    ``total`` that is not a positive number, or a ``message`` that is not a string.
    Raises ``TaskCancelled`` once the job was cancelled: the job ends ``REVOKED``.
    """
    current = _number("current", current)
    if current < 0:
        raise ValueError(f"progress(): current must be >= 0, got {current!r}")
    if total is not None:
        total = _number("total", total)
        if total <= 0:
            raise ValueError(f"progress(): total must be > 0, got {total!r}")
    if not isinstance(message, str):
        raise ValueError(f"progress(): message must be a string, got {message!r}")
    attempt = attempt_var.get()
    if attempt is None:
        return False
    if attempt.cancel_requested():
        raise TaskCancelled(attempt.job.id)
    attempt.report_progress(current, total, message[:500])
    return True
