"""Sentinel settings: ``sentinel://`` URL lists, ``DISPATCH_SENTINEL_MASTER`` and
``DISPATCH_SENTINEL_PASSWORD``, and URLs redacted whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from dispatcher import ConfigurationError, DispatcherSettings, get_settings
from dispatcher.core.redis_url import (
    SentinelOptions,
    SentinelTarget,
    check_redis_url,
    parse_sentinel_url,
    redact_url,
    split_urls,
)
from dispatcher.core.settings import build_settings
from tests.unit.helpers import unit_settings

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


def test_a_sentinel_list_names_its_nodes_database_and_credentials() -> None:
    target = parse_sentinel_url(SENTINELS)
    assert target.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (target.db, target.username, target.password) == (2, None, "s3cret")
    assert "s3cret" not in repr(target)


def test_one_sentinel_and_user_credentials() -> None:
    target = parse_sentinel_url("sentinel://app:p%40ss@sentinel-0")
    assert target == SentinelTarget((("sentinel-0", 26379),), 0, "app", "p@ss")


@pytest.mark.parametrize("url", [
    "sentinel://h1:26379;redis://h2:6379",             # a server among the Sentinels
    "sentinel://:26379",                               # no host
    "sentinel://h1:port",                              # no port number
    "sentinel://h1/zero",                              # database not a number
    "sentinel://h1?ssl_cert_reqs=none",                # options kombu would not read
    "sentinel://:a@h1;sentinel://:b@h2",               # two passwords: which one?
    "sentinel://h1/0;sentinel://h2/1",                 # two databases
])
def test_malformed_sentinel_lists_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)sentinel") as caught:
        parse_sentinel_url(url)
    assert ":a@" not in str(caught.value)


def test_split_keeps_a_semicolon_inside_one_url() -> None:
    assert split_urls("redis://h/0?password=a;b") == ["redis://h/0?password=a;b"]
    assert split_urls("sentinel://a:1;sentinel://b:2") == ["sentinel://a:1", "sentinel://b:2"]


def test_settings_accept_sentinel_urls_with_a_master() -> None:
    settings = unit_settings(broker_url=SENTINELS, result_backend_url=SENTINELS,
                             sentinel_master="mymaster", sentinel_password="sentinel-secret")
    assert settings.broker_url == settings.results_url == SENTINELS
    assert settings.sentinel == SentinelOptions("mymaster", SecretStr("sentinel-secret"))
    assert "sentinel-secret" not in repr(settings) + str(settings.model_dump())


def test_settings_read_the_sentinel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", SENTINELS)
    monkeypatch.setenv("DISPATCH_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("DISPATCH_SENTINEL_PASSWORD", "sentinel-secret")
    settings = DispatcherSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.sentinel_master == "mymaster"
    assert settings.sentinel_password is not None
    assert settings.sentinel_password.get_secret_value() == "sentinel-secret"


def test_without_a_master_there_are_no_sentinel_options() -> None:
    settings = unit_settings(sentinel_master="  ", sentinel_password="")
    assert (settings.sentinel_master, settings.sentinel_password, settings.sentinel) == (
        None, None, None)


@pytest.mark.parametrize("field", ["broker_url", "result_backend_url"])
def test_a_sentinel_url_without_a_master_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="DISPATCH_SENTINEL_MASTER"):
        unit_settings(**{field: SENTINELS})
    with pytest.raises(ConfigurationError, match="DISPATCH_SENTINEL_MASTER") as caught:
        build_settings(unit_settings(), **{field: SENTINELS})
    assert "s3cret" not in str(caught.value)


def test_get_settings_names_the_missing_master(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    import dispatcher.core.settings as settings_module

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr(settings_module, "_current", None)
    monkeypatch.setenv("DISPATCH_BROKER_URL", SENTINELS)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert "DISPATCH_BROKER_URL" in message and "DISPATCH_SENTINEL_MASTER" in message
    assert "s3cret" not in message


def test_other_schemes_are_still_refused() -> None:
    with pytest.raises(ValueError, match="sentinel://"):
        check_redis_url("amqp://guest@h//", "mymaster")
    assert check_redis_url("redis://h:6379/0", None) == "redis://h:6379/0"


def test_redact_url_hides_every_password_of_a_list() -> None:
    url = "sentinel://:one@h1:26379/0;sentinel://user:two@h2:26379/0"
    assert redact_url(url) == "sentinel://:***@h1:26379/0;sentinel://user:***@h2:26379/0"
