"""compose.yaml parses and wires the api and worker to the redis service."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dispatcher import DispatcherSettings

COMPOSE = Path(__file__).resolve().parents[1] / "compose.yaml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_services_and_profiles() -> None:
    services = _compose()["services"]
    assert {"redis", "api", "worker", "flower"} <= set(services)
    assert services["flower"]["profiles"] == ["monitoring"]
    for name in ("redis", "api", "worker", "flower"):
        assert "healthcheck" in services[name], name
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_and_worker_point_at_the_redis_service_with_valid_settings() -> None:
    services = _compose()["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        url = env["DISPATCH_BROKER_URL"]
        assert urlsplit(url).hostname == "redis", name
        settings = DispatcherSettings(
            **{k.removeprefix("DISPATCH_").lower(): v for k, v in env.items()},
            _env_file=None,  # type: ignore[call-arg]
        )
        assert settings.broker_url == url
        assert settings.task_modules == ["api.tasks"]
    assert "worker" in " ".join(services["worker"]["command"])


def test_worker_serves_metrics_outside_its_container() -> None:
    worker = _compose()["services"]["worker"]
    env = worker["environment"]
    settings = DispatcherSettings(
        **{k.removeprefix("DISPATCH_").lower(): v for k, v in env.items()},
        _env_file=None,  # type: ignore[call-arg]
    )
    assert settings.metrics_host == "0.0.0.0"
    assert f"127.0.0.1:{settings.metrics_port}:{settings.metrics_port}" in worker["ports"]
