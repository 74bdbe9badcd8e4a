"""Celery's request for our tasks, telling our transport when a pool process accepted
a job: its taken mark is then cleared (``spare``, ``lua/count_delivery.lua``)."""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request


class StartedRequest(Request):
    """Celery's request for our tasks; tells our transport when a pool process accepted
    the job (Celery's accept message comes before the task runs)."""

    def on_accepted(self, pid: Any, time_accepted: Any) -> None:
        super().on_accepted(pid, time_accepted)
        message = self.message
        started = getattr(getattr(getattr(message, "channel", None), "qos", None),
                          "started", None)
        if started is not None:
            started(message.delivery_tag, self.id)
