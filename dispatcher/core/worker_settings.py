"""The settings of ``dispatcher worker``: which consumer takes the messages, what Celery
logs and sends, and the metrics endpoint (part of ``DispatcherSettings``, which inherits
them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings


class WorkerSettings(BaseSettings):
    """How a worker takes and runs messages."""

    worker_consumer: Literal["direct", "celery"] = Field(
        default="direct",
        description="Who takes messages off the queues in `dispatcher worker`. direct: each "
        "of `--concurrency` processes takes its own messages and runs them itself, beside "
        "one Celery process for `inspect`, Flower and the upkeep. celery: Celery's consumer "
        "hands each message to a prefork pool process (about half the throughput of short "
        "jobs; for Celery's pool options, or a message `eta` held in the worker).",
    )
    worker_events: bool = Field(
        default=False,
        description="Workers send Celery task events from the start (Celery's default is "
        "off too); Flower switches them on while it watches. Costs ~30% of the "
        "throughput of very short jobs.",
    )
    worker_task_logs: bool = Field(
        default=False,
        description="Celery's own per-job log lines in workers (\"Task ... received\", "
        "\"... succeeded in\"). Off: our task.started / task.succeeded events say the "
        "same, and the received line costs the worker's main process, its serial stage.",
    )
    worker_spare_below: float = Field(
        default=0.05,
        ge=0,
        description="While a worker's jobs take less than this many seconds on average, it "
        "takes jobs ahead: Celery's consumer one beyond its free pool processes, a direct "
        "consumer up to seven behind the one it runs (a job held behind long ones would "
        "wait while another worker idles); 0: never.",
    )
    worker_mingle: bool = Field(
        default=False,
        description="`dispatcher worker` runs Celery's start-up mingle (syncing revoked "
        "task ids with other workers, ~1 s per start). Off: the dispatcher never revokes.",
    )
    metrics_port: int = Field(
        default=9808,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus /metrics endpoint; 0 switches it off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the worker's metrics endpoint binds to."
    )
