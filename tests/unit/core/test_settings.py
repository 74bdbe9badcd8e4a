"""``DispatcherSettings``: DISPATCH_* environment, aliases, validation, ``configure``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dispatcher import ConfigurationError, DispatcherSettings, configure, get_settings
from dispatcher.core.redis_url import redact_url
from dispatcher.core.settings import RouteRule
from dispatcher.runtime.container import current
from dispatcher.store.memory import MemoryRecordStore
from tests.unit.helpers import unit_settings


def from_env() -> DispatcherSettings:
    return DispatcherSettings(_env_file=None)  # type: ignore[call-arg]


def test_defaults_without_environment() -> None:
    s = from_env()
    assert s.broker_url is None
    assert s.result_backend_url is None
    assert s.results_url is None
    assert s.task_modules == []
    assert s.force_route is None
    assert s.routes == []
    assert (s.inline_max_weight, s.inline_concurrency) == (3, 4)
    assert s.inline_hold_request is False
    assert (s.default_queue, s.log_format, s.log_level) == ("celery", "text", "INFO")


def test_env_prefix_is_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_INLINE_MAX_WEIGHT", "7")
    monkeypatch.setenv("DISPATCH_INLINE_CONCURRENCY", "2")
    monkeypatch.setenv("DISPATCH_FORCE_ROUTE", "celery")
    monkeypatch.setenv("DISPATCH_DEFAULT_QUEUE", "bulk")
    monkeypatch.setenv("DISPATCH_LOG_FORMAT", "json")
    monkeypatch.setenv("DISPATCH_LOG_LEVEL", "debug")
    monkeypatch.setenv("DISPATCH_INLINE_HOLD_REQUEST", "true")
    monkeypatch.setenv("INLINE_MAX_WEIGHT", "99")  # no prefix: ignored
    s = from_env()
    assert (s.inline_max_weight, s.inline_concurrency) == (7, 2)
    assert (s.force_route, s.default_queue) == ("celery", "bulk")
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    assert s.inline_hold_request is True


def test_broker_url_from_dispatch_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", "redis://localhost:6379/1")
    s = from_env()
    assert s.broker_url == "redis://localhost:6379/1"
    assert s.results_url == "redis://localhost:6379/1"  # records default to the broker


def test_redis_url_is_an_alias_for_the_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    assert from_env().broker_url == "redis://cache:6380/2"


def test_result_backend_url_overrides_results_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", "redis://broker/0")
    monkeypatch.setenv("DISPATCH_RESULT_BACKEND_URL", "rediss://results/1")
    assert from_env().results_url == "rediss://results/1"


def test_blank_broker_url_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", "   ")
    assert from_env().broker_url is None


def test_explicit_none_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", "redis://leaky:6379/0")
    monkeypatch.setenv("REDIS_URL", "redis://leaky:6379/0")
    assert unit_settings().broker_url is None


def test_task_modules_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_TASK_MODULES", "a, b")
    assert from_env().task_modules == ["a", "b"]
    monkeypatch.setenv("DISPATCH_TASK_MODULES", " api.tasks ,, more.tasks,")
    assert from_env().task_modules == ["api.tasks", "more.tasks"]
    monkeypatch.setenv("DISPATCH_TASK_MODULES", "")
    assert from_env().task_modules == []
    assert unit_settings(task_modules="x,y").task_modules == ["x", "y"]
    assert unit_settings(task_modules=["x"]).task_modules == ["x"]


@pytest.mark.parametrize(
    "url", ["amqp://guest@localhost//", "http://localhost:6379", "localhost:6379", "memory://"]
)
def test_non_redis_broker_url_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ValidationError, match="redis://"):
        unit_settings(broker_url=url)
    with pytest.raises(ValidationError, match="redis://"):
        unit_settings(result_backend_url=url)
    monkeypatch.setenv("DISPATCH_BROKER_URL", url)
    with pytest.raises(ValidationError):
        from_env()


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://h:6380/1", "unix:///tmp/redis.sock"]
)
def test_redis_schemes_are_accepted(url: str) -> None:
    assert unit_settings(broker_url=url).broker_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISPATCH_INLINE_MAX_WEIGHT", "0"),
        ("DISPATCH_INLINE_CONCURRENCY", "0"),
        ("DISPATCH_FORCE_ROUTE", "sometimes"),
        ("DISPATCH_LOG_FORMAT", "xml"),
        ("DISPATCH_LOG_LEVEL", "LOUD"),
        ("DISPATCH_PUBLISH_TIMEOUT", "0"),
        ("DISPATCH_PUBLISH_SPIN_US", "-1"),
        ("DISPATCH_PUBLISH_SPIN_US", "20000"),
        ("DISPATCH_DEFAULT_QUEUE", ""),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        from_env()


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "unit.env"
    env_file.write_text("DISPATCH_INLINE_MAX_WEIGHT=6\nDISPATCH_TASK_MODULES=m1,m2\n")
    s = DispatcherSettings(_env_file=env_file)  # type: ignore[call-arg]
    assert (s.inline_max_weight, s.task_modules) == (6, ["m1", "m2"])


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        unit_settings().inline_max_weight = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://default:p%40ss@host/1", "rediss://default:***@host/1"),
        ("redis://:secret@host", "redis://:***@host"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (None, None),
    ],
)
def test_redact_url_hides_passwords(url: str | None, expected: str | None) -> None:
    assert redact_url(url) == expected
    if url is not None and "secret" in url:
        assert "secret" not in str(redact_url(url))


def test_redact_url_keeps_ipv6_brackets() -> None:
    """Regression (was a bug in dispatcher/settings.py, ``redact_url``): it rebuilds the netloc from
    ``parts.hostname``, which has no brackets, so an IPv6 URL comes back unusable:
    ``redis://:secret@[::1]:6379/0`` -> ``redis://:***@::1:6379/0``."""
    assert redact_url("redis://:secret@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


def test_redact_url_hides_a_password_in_the_query() -> None:
    """Regression (was a bug in dispatcher/settings.py, ``redact_url``): redis-py takes the password
    from the query string too (``redis://host/0?password=...``), and ``redact_url``
    returns such a URL unchanged, so ``GET /health``-style answers leak it."""
    redacted = redact_url("redis://localhost:6379/0?password=secret")
    assert redacted is not None
    assert "secret" not in redacted


def test_unprefixed_broker_url_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (was a bug in ``broker_url``'s ``AliasChoices``): the plain
    alias ``"broker_url"`` makes pydantic-settings also read an unprefixed ``BROKER_URL``
    variable (case-insensitive), which is neither ``DISPATCH_BROKER_URL`` nor the
    documented ``REDIS_URL`` alias. A ``BROKER_URL=amqp://...`` meant for another tool
    then makes the settings fail to load, or a stray Redis URL silently enables Celery."""
    monkeypatch.setenv("BROKER_URL", "redis://someone-else:6379/0")
    assert from_env().broker_url is None


def test_get_settings_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import dispatcher.core.settings as settings_module

    monkeypatch.setattr(settings_module, "_current", None)
    monkeypatch.setenv("DISPATCH_DEFAULT_QUEUE", "first")
    first = get_settings()
    monkeypatch.setenv("DISPATCH_DEFAULT_QUEUE", "second")
    assert get_settings() is first
    assert first.default_queue == "first"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("DISPATCH_INLINE_CONCURRENCY", "0", r"DISPATCH_INLINE_CONCURRENCY"),
    ("DISPATCH_ROUTES", '[{"match": "x.*"', r"DISPATCH_ROUTES \(routes\): not valid JSON"),
])
def test_get_settings_names_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, message: str
) -> None:
    import dispatcher.core.settings as settings_module

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr(settings_module, "_current", None)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=message):
        get_settings()


def test_configure_replaces_settings_and_resets_services() -> None:
    store = current().records
    assert isinstance(store, MemoryRecordStore)
    new = configure(unit_settings(inline_max_weight=8))
    assert get_settings() is new
    assert get_settings().inline_max_weight == 8
    assert current().records is not store


def test_configure_overrides_are_validated() -> None:
    base = configure(unit_settings(default_queue="base"))
    rule = RouteRule(route="celery", priority="low")  # type: ignore[arg-type]
    updated = configure(base, inline_concurrency=2, routes=[rule])
    assert updated.inline_concurrency == 2
    assert updated.default_queue == "base"
    assert updated.broker_url is None
    assert updated.routes[0].priority == (2,)
    with pytest.raises(ConfigurationError, match="DISPATCH_INLINE_CONCURRENCY"):
        configure(updated, inline_concurrency=0)
    with pytest.raises(ConfigurationError, match="DISPATCH_BROKER_URL"):
        configure(updated, broker_url="amqp://x")
    assert get_settings() is updated  # a refused configure changes nothing
