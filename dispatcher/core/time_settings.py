"""The settings of time and flow: periodic schedules, their time zone and catch-up,
where delayed jobs are relayed, and concurrency leases (part of ``DispatcherSettings``,
which inherits them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from .schedule import parse_schedule


class ScheduleEntry(BaseModel):
    """One entry of ``DISPATCH_SCHEDULES``: a task run on a ``cron`` expression or
    ``every`` N seconds, with ``kwargs``.

    Example: ``{"task": "reports.daily", "cron": "0 6 * * *", "kwargs": {"kind": "sales"}}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1)
    cron: str | None = None
    every: Annotated[float, Field(ge=1)] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_schedule("", value)  # ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleEntry:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        return self


class TimeSettings(BaseSettings):
    """Schedules and delayed jobs."""

    timezone: str = Field(
        default="UTC",
        description="Time zone of cron schedules (an IANA name such as Europe/Paris).",
    )
    schedules: list[ScheduleEntry] = Field(
        default_factory=list,
        description='Schedules with arguments, a JSON list of {"task", "cron" or "every" '
        '(seconds), "kwargs"}; added to those of @task(schedule=...).',
    )
    schedule_catchup: Literal["latest", "all", "none"] = Field(
        default="latest",
        description="Ticks missed while no worker ran (or Redis was down): run the latest "
        "once, run all of them, or none.",
    )
    relay_delayed_in_api: bool = Field(
        default=False,
        description="API processes also publish delayed jobs to their queues when due "
        "(workers always do): a queue-length autoscaler then sees them while no worker runs.",
    )

    concurrency_lease: float = Field(
        default=10.0, ge=1.0,
        description="Seconds a concurrency slot (@task(concurrency=N)) stays taken after its "
        "holder stops renewing it: a process that dies frees its slots within this time. "
        "Holders renew every third of it.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value
