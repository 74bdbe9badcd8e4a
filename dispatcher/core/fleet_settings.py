"""The settings of a fleet: many workers and services on one Redis (part of
``DispatcherSettings``, which inherits them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class FleetSettings(BaseSettings):
    """Liveness of workers, rolling deploys and sharing a Redis."""

    namespace: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Prefix (`<namespace>:`) of every Redis key the dispatcher, Celery and "
        "kombu write: queues, job records, dead letters, adaptive state, workers. Apps "
        "sharing one Redis database with different namespaces never see each other's "
        "jobs. Unset: no prefix (the key layout Flower and existing data use). Every "
        "process of one app (API, workers, Flower) must use the same one.",
    )

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
