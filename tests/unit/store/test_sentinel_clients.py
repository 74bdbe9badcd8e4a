"""What the clients of a ``sentinel://`` URL list are made of (no server needed: nothing
connects before the first call). The real Sentinels are in tests/integration/store."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr
from redis.sentinel import SentinelConnectionPool

from dispatcher import ConfigurationError
from dispatcher.core.redis_url import SentinelOptions
from dispatcher.routes.celery.app import create_celery_app
from dispatcher.store.client import redis_client
from dispatcher.store.sentinel import MasterConnection
from tests.unit.helpers import unit_settings

URL = "sentinel://:server-secret@10.0.0.1:26379/3;sentinel://10.0.0.2:26380/3"


def test_a_sentinel_client_is_bounded_and_asks_the_sentinels() -> None:
    client = redis_client(URL, 2.0, SentinelOptions("mymaster", SecretStr("sentinel-secret")))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.is_master) == ("mymaster", True)
    assert pool.connection_class is MasterConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 2.0)
    assert (kwargs["db"], kwargs["password"], kwargs["health_check_interval"]) == (
        3, "server-secret", 0)
    assert kwargs["retry"].get_retries() == 0
    sentinels = pool.sentinel_manager.sentinels
    addresses = [(s.connection_pool.connection_kwargs["host"],
                  s.connection_pool.connection_kwargs["port"]) for s in sentinels]
    assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    for sentinel in sentinels:  # each Sentinel asked for a share of the timeout
        node = sentinel.connection_pool.connection_kwargs
        assert (node["socket_timeout"], node["password"]) == (1.0, "sentinel-secret")
        assert node["retry"].get_retries() == 0
    assert "secret" not in repr(client)


def test_a_sentinel_client_needs_the_master_name() -> None:
    with pytest.raises(ConfigurationError, match="DISPATCH_SENTINEL_MASTER"):
        redis_client(URL, 2.0)


def test_a_server_url_gives_a_plain_client() -> None:
    client = redis_client("redis://10.0.0.1:6379/0", 2.0,
                          SentinelOptions("mymaster", None))  # ignored: not a Sentinel URL
    assert type(client.connection_pool) is redis.ConnectionPool


def test_celery_reaches_broker_and_backend_through_the_sentinels() -> None:
    settings = unit_settings(broker_url=URL, sentinel_master="mymaster",
                             sentinel_password="sentinel-secret", publish_timeout=3.0)
    conf = create_celery_app(settings).conf
    assert (conf.broker_url, conf.result_backend) == (URL, URL)
    expected = {"master_name": "mymaster", "sentinel_kwargs": {
        "socket_timeout": 1.5, "socket_connect_timeout": 1.5, "password": "sentinel-secret"}}
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert {k: options[k] for k in expected} == expected
    assert conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout
    assert conf.broker_channel_error_retry is True
    censored = str(conf.humanize(with_defaults=False, censored=True))
    assert "sentinel-secret" not in censored


def test_only_the_sentinel_url_gets_sentinel_options() -> None:
    settings = unit_settings(broker_url=URL, result_backend_url="redis://10.0.0.9:6379/1",
                             sentinel_master="mymaster")
    conf = create_celery_app(settings).conf
    assert conf.broker_transport_options["sentinel_kwargs"] == {
        "socket_timeout": 1.0, "socket_connect_timeout": 1.0}  # no Sentinel password set
    assert "master_name" not in conf.result_backend_transport_options
    plain = create_celery_app(unit_settings(broker_url="redis://10.0.0.9:6379/1")).conf
    assert "master_name" not in plain.broker_transport_options
    assert plain.broker_channel_error_retry is False
