"""compose.yaml parses and wires the api and worker to the redis service, puts what
they write on volumes their user owns, and has Prometheus scrape both.

tests/integration/fastapi/test_compose_api.py runs the api's command as the container
would."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dispatcher import DispatcherSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_services_and_profiles() -> None:
    services = _compose()["services"]
    assert {"redis", "api", "worker", "flower", "prometheus"} <= set(services)
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    for name in ("redis", "api", "worker", "flower", "prometheus"):
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


def _settings(env: dict[str, str]) -> DispatcherSettings:
    return DispatcherSettings(
        **{k.removeprefix("DISPATCH_").lower(): v for k, v in env.items()
           if k.startswith("DISPATCH_")},
        _env_file=None,  # type: ignore[call-arg]
    )


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name or host path, from the short volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def _image_user_and_owned_dirs(service: dict[str, Any]) -> tuple[str, set[str]]:
    """The inline Dockerfile's USER and the paths it chowns to that user."""
    dockerfile = service["build"]["dockerfile_inline"].replace("\\\n", " ")
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(users) == 1, dockerfile
    user = users[0]
    owned: set[str] = set()
    for command in re.split(r"&&|;|\n", dockerfile):
        words = [w for w in command.split() if not w.startswith("-")]
        if words[:1] == ["chown"] and words[1].split(":")[0] == user:
            owned.update(words[2:])
    return user, owned


def test_what_the_services_write_is_on_volumes_their_user_owns() -> None:
    """The containers run as nobody in a root-owned /app: the example tasks' directory
    (API_DATA_DIR) and the spool must be on named volumes, which start out owned like the
    image's directory they mount on."""
    compose = _compose()
    for name in ("api", "worker"):
        service = compose["services"][name]
        env = service["environment"]
        user, owned = _image_user_and_owned_dirs(service)
        assert user != "root", name
        mounts = _mounts(service)
        written = {
            "API_DATA_DIR": env["API_DATA_DIR"],
            "DISPATCH_SPOOL_PATH": posixpath.dirname(_settings(env).spool_path),
        }
        for setting, path in written.items():
            assert posixpath.isabs(path), (name, setting)
            assert mounts.get(path) in compose["volumes"], (name, setting, path)
            assert path in owned, (name, setting, path, owned)


def _option(command: list[str], name: str) -> str:
    for i, word in enumerate(command):
        if word == name:
            return command[i + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {command}")


def test_prometheus_scrapes_the_api_and_the_worker_by_service_name() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]
    config_path = _option(prometheus["command"], "--config.file")
    host_file = _mounts(prometheus)[config_path]
    config = yaml.safe_load((ROOT / host_file).read_text())
    scraped = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }

    api = services["api"]["command"]
    assert _option(api, "--host") == "0.0.0.0"
    worker_settings = _settings(services["worker"]["environment"])
    assert worker_settings.metrics_host == "0.0.0.0"
    assert worker_settings.metrics_port > 0
    assert scraped == {
        f"api:{_option(api, '--port')}": "/metrics",
        f"worker:{worker_settings.metrics_port}": "/metrics",
    }
    assert "9090:9090" in " ".join(prometheus["ports"])
