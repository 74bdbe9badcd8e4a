"""The settings of a fleet: many workers and services on one Redis (part of
``DispatcherSettings``, which inherits them)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from .redis_url import SentinelOptions


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

    sentinel_master: str | None = Field(
        default=None,
        description="Name of the master the Sentinels watch (their `sentinel monitor "
        "<name> ...`); required when DISPATCH_BROKER_URL or DISPATCH_RESULT_BACKEND_URL "
        "is a `sentinel://host:port;sentinel://host:port` list.",
    )
    sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the Sentinels themselves (their `requirepass`), never "
        "logged; the Redis servers' own password goes in the URL.",
    )

    @field_validator("sentinel_master", "sentinel_password", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def sentinel(self) -> SentinelOptions | None:
        """What a client of a ``sentinel://`` URL needs besides it; None when unset."""
        if self.sentinel_master is None:
            return None
        return SentinelOptions(self.sentinel_master, self.sentinel_password)

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
