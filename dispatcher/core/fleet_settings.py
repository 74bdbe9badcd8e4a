"""The settings of a fleet: many workers and services on one Redis (part of
``DispatcherSettings``, which inherits them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class FleetSettings(BaseSettings):
    """Liveness of workers, rolling deploys and sharing a Redis."""

    worker_dead_after: float = Field(
        default=30.0,
        ge=3,
        description="Seconds without a heartbeat after which a worker counts as dead: any "
        "live worker then re-queues the jobs it had taken and not acknowledged, whatever "
        "the visibility timeout.",
    )
    max_crashes: int = Field(
        default=3,
        ge=1,
        description="How many times a job's process may die while running it (SIGKILL, "
        "OOM) before the job is dead-lettered as poison; counted apart from the retry "
        "policy's attempts.",
    )
    unknown_task_grace: float = Field(
        default=300.0,
        ge=0,
        description="Seconds a worker hands back a message for a task it does not have "
        "(a rolling deploy, another service's worker) before, with no live worker "
        "advertising that task, the job is recorded FAILURE and dead-lettered.",
    )
