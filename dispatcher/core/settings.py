"""Typed configuration, read once from ``DISPATCH_*`` environment variables and ``.env``."""

from __future__ import annotations

import json
import re
import threading
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict, SettingsError

from .errors import ConfigurationError
from .fleet_settings import FleetSettings
from .redis_url import check_redis_url
from .spec import RouteName, parse_priority
from .time_settings import TimeSettings
from .worker_settings import WorkerSettings


class RouteRule(BaseModel):
    """One entry of ``DISPATCH_ROUTES``: match on name glob, priority and weight range.

    Example: ``{"match": "reports.*", "min_weight": 5, "route": "celery", "queue": "heavy"}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = "*"
    priority: tuple[int, ...] | None = None
    min_weight: int | None = Field(default=None, ge=1)
    max_weight: int | None = Field(default=None, ge=1)
    route: RouteName
    queue: str | None = Field(default=None, min_length=1)

    @field_validator("priority", mode="before")
    @classmethod
    def _priorities(cls, value: Any) -> Any:
        if value is None:
            return None
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(parse_priority(v) for v in items)


class DispatcherSettings(FleetSettings, TimeSettings, WorkerSettings):
    """All settings; each field ``foo`` is read from ``DISPATCH_FOO``."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCH_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DISPATCH_BROKER_URL", "REDIS_URL"),
        description="Redis URL (or `sentinel://` list) of the Celery broker; unset: no "
        "Celery route (and `make run` starts an embedded server).",
    )
    result_backend_url: str | None = Field(
        default=None, description="Redis URL for job records; defaults to the broker URL."
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules to import so their @task functions register.",
    )
    force_route: RouteName | None = Field(
        default=None, description="Send every dispatch to this route (tests, local runs)."
    )
    routes: list[RouteRule] = Field(
        default_factory=list, description="JSON list of routing rules; first match wins."
    )
    inline_max_weight: int = Field(
        default=3, ge=1, description="Tasks with weight above this go to Celery by default."
    )
    inline_concurrency: int = Field(
        default=4, ge=1, description="Inline jobs running at once in one process."
    )
    inline_busy_share: float = Field(
        default=0.02,
        gt=0,
        le=1,
        description="While this process's server loop is CPU-saturated, inline jobs held "
        "past DISPATCH_INLINE_MAX_HOLD start only as often as keeps their CPU time within "
        "this share (1: never yield, start every job at once).",
    )
    inline_max_hold: float = Field(
        default=10.0,
        ge=0,
        description="Seconds an inline job waits for a burst of requests to end before it "
        "starts anyway, paced to DISPATCH_INLINE_BUSY_SHARE (0: paced from the start).",
    )
    inline_hold_request: bool = Field(
        default=False,
        description="Run a request's inline jobs inside its request cycle, like plain "
        "BackgroundTasks (TestClient returns after they finish).",
    )
    inline_max_seconds: float = Field(
        default=1.0,
        gt=0,
        description="weight=\"auto\" tasks move to Celery while their measured p95 run time "
        "exceeds this, and back once it falls below half of it.",
    )
    inline_max_pending: int = Field(
        default=10_000,
        ge=1,
        description="Inline jobs waiting in one process before new, not pinned jobs spill "
        "over to Celery (needs a broker); fewer under DISPATCH_INLINE_MAX_BACKLOG.",
    )
    inline_max_backlog: float = Field(
        default=2.5,
        gt=0,
        description="Seconds of work the inline jobs waiting in one process may add up to "
        "before new, not pinned jobs spill over to Celery: each counts at the mean run "
        "time of its task's inline jobs in this process (10 ms until one has run) over "
        "DISPATCH_INLINE_CONCURRENCY slots, so heavy jobs spill sooner than cheap ones.",
    )
    adaptive_window: int = Field(
        default=20,
        ge=5,
        le=1000,
        description="Run times kept per weight=\"auto\" task for its p95 (shared via Redis).",
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description="Seconds the inline executor may drain at shutdown."
    )
    default_queue: str = Field(default="celery", min_length=1, description="Celery queue name.")
    publish_timeout: float = Field(
        default=2.0, gt=0, description="Seconds a Celery publish may block before failing."
    )
    publish_spin_us: int = Field(
        default=100, ge=0, le=10_000,
        description="Microseconds a one-by-one Celery dispatch busy-polls for Redis's reply "
        "before it sleeps on the socket (0: never): a reply due sooner then needs no "
        "wake-up of the thread. Spinning pauses by itself while replies come later.",
    )
    result_ttl: int = Field(default=86_400, ge=1, description="Seconds job records are kept.")
    broker_outage: Literal["spool", "inline", "raise"] = Field(
        default="spool",
        description="What dispatch() does when the broker is down: spool to disk, run inline, "
        "or raise BrokerUnavailable.",
    )
    spool_path: str = Field(
        default=".dispatch/spool.sqlite3", description="SQLite file of the outage spool."
    )
    visibility_timeout: int = Field(
        default=3600,
        ge=10,
        description="Seconds before Redis redelivers an unacknowledged job; must exceed every "
        "task timeout (delayed jobs and retries wait in the dispatcher's delay store, "
        "not in a worker).",
    )
    requeue_lost_after: float = Field(
        default=60.0,
        ge=1,
        description="Seconds after which a worker re-queues a published job that Redis "
        "lost before any worker took it.",
    )
    idempotency_ttl: int = Field(
        default=86_400, ge=1, description="Seconds an idempotency key is remembered."
    )
    max_payload_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body / job message accepted."
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by the API's dispatch and status endpoints "
        "(unset: they answer clients on this machine only).",
    )
    redact: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated argument names hidden from listings and logs.",
    )
    allow_insecure_tls: bool = Field(
        default=False, description="Accept rediss:// URLs that skip certificate checks."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one `time level event key=value ...` line per event; json: one "
        "JSON object per line.")
    log_level: str = Field(default="INFO", description="Level of the `dispatcher` logger.")

    @field_validator("task_modules", "redact", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("broker_url", "result_backend_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("broker_url", "result_backend_url")
    @classmethod
    def _redis_scheme(cls, url: str | None, info: ValidationInfo) -> str | None:
        return check_redis_url(url, info.data.get("sentinel_master"))  # a fleet setting

    @property
    def results_url(self) -> str | None:
        """Where job records live: the result backend, else the broker."""
        return self.result_backend_url or self.broker_url


_lock = threading.Lock()
_current: DispatcherSettings | None = None


def get_settings() -> DispatcherSettings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    current = _current
    if current is not None:  # every dispatch asks: no lock once they are known
        return current
    with _lock:
        if _current is None:
            try:
                _current = DispatcherSettings()
            except ValidationError as exc:
                raise settings_error(exc) from None
            except SettingsError as exc:  # e.g. DISPATCH_ROUTES that is not JSON
                raise source_error(exc) from None
        return _current


def settings_error(exc: ValidationError) -> ConfigurationError:
    """A readable error naming the environment variables at fault."""
    problems = []
    for item in exc.errors(include_url=False):
        loc = str(item["loc"][0]) if item["loc"] else ""
        field = loc.lower().removeprefix("dispatch_")
        variable = loc if loc.isupper() else f"DISPATCH_{loc.upper()}" if loc else "settings"
        if field in ("redis_url", "broker_url"):
            field, variable = "broker_url", "DISPATCH_BROKER_URL (or REDIS_URL)"
        problems.append(f"{variable} ({field or 'settings'}): {item['msg']}")
    return ConfigurationError("invalid settings: " + "; ".join(problems))


def source_error(exc: SettingsError) -> ConfigurationError:
    """A value pydantic-settings could not even parse (JSON of a list setting), as a
    readable error naming its environment variable."""
    named = re.search(r'field "(\w+)"', str(exc))
    if named is None:
        return ConfigurationError(f"invalid settings: {exc}")
    cause = exc.__cause__
    why = f"not valid JSON ({cause})" if isinstance(cause, json.JSONDecodeError) \
        else str(cause or exc)
    return ConfigurationError(
        f"invalid settings: DISPATCH_{named[1].upper()} ({named[1]}): {why}")


def build_settings(settings: DispatcherSettings | None = None,
                   **overrides: Any) -> DispatcherSettings:
    """``settings`` (default: read from the environment) with ``overrides`` applied and
    validated; ``ConfigurationError`` names the variables at fault."""
    base = settings if settings is not None else DispatcherSettings()
    if not overrides:
        return base
    try:
        return DispatcherSettings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise settings_error(exc) from None


def replace_settings(settings: DispatcherSettings) -> None:
    """Make ``settings`` the process-wide settings (``dispatcher.configure`` does this
    and then resets what was built from the old ones)."""
    global _current
    with _lock:
        _current = settings
