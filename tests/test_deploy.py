"""deploy/kubernetes/: the manifests parse, name only settings that exist with valid
values, give each pod more time to stop than it needs, probe paths the processes
really serve, and scale the worker Deployment on the backlog gauge."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.exposition import make_wsgi_app

from dispatcher import DispatcherSettings
from dispatcher.core.registry import all_tasks
from dispatcher.observability.gauges import COLLECTOR
from dispatcher.observability.metrics import scrape_registry

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
Manifest = dict[str, Any]


def _manifests() -> list[tuple[str, Manifest]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), path.name
                found.append((path.name, document))
    return found


def _one(kind: str, name: str | None = None) -> Manifest:
    matches = [m for _, m in _manifests()
               if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def _component(component: str) -> Manifest:
    matches = [m for _, m in _manifests() if m["kind"] == "Deployment"
               and m["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(matches) == 1, component
    return matches[0]


def _container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _setting_variables() -> set[str]:
    """Every environment variable DispatcherSettings reads (as docs/gen_settings.py)."""
    prefix = DispatcherSettings.model_config.get("env_prefix", "")
    names = set()
    for name, field in DispatcherSettings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = field.validation_alias
        for choice in getattr(alias, "choices", None) or [alias]:
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def _environment(deployment: Manifest) -> dict[str, str]:
    """The container's DISPATCH_* environment: its ConfigMap, then its own entries."""
    container = _container(deployment)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def _settings(deployment: Manifest) -> DispatcherSettings:
    """The settings the container runs with (the broker URL comes from the Secret)."""
    env = {k: v for k, v in _environment(deployment).items() if k.startswith("DISPATCH_")}
    return DispatcherSettings(  # type: ignore[call-arg]
        **{k.removeprefix("DISPATCH_").lower(): v for k, v in env.items()},
        broker_url="redis://redis:6379/0", _env_file=None)


def _probes(container: Manifest) -> Iterator[tuple[str, Manifest]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert kind in container, kind
        yield kind, container[kind]["httpGet"]


def _port(container: Manifest, name_or_number: str | int) -> int:
    for port in container["ports"]:
        if name_or_number in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"no container port {name_or_number!r}")


def test_every_manifest_parses_and_kustomize_applies_them_all() -> None:
    manifests = _manifests()
    kinds = sorted({m["kind"] for _, m in manifests})
    assert kinds == ["ConfigMap", "Deployment", "Kustomization", "ScaledObject", "Service"]
    kustomization = _one("Kustomization")
    files = {name for name, m in manifests if m["kind"] != "Kustomization"}
    assert sorted(kustomization["resources"]) == sorted(files)
    for name, manifest in manifests:
        assert manifest["apiVersion"], name
        if manifest["kind"] != "Kustomization":
            assert manifest["metadata"]["name"], name


def test_every_dispatch_variable_named_is_a_setting() -> None:
    known = _setting_variables()
    for path in sorted(DEPLOY.iterdir()):
        named = set(re.findall(r"\bDISPATCH_[A-Z0-9_]+\b", path.read_text()))
        assert sorted(named - known) == [], path.name
    for component in ("api", "worker"):
        assert set(_environment(_component(component))) & known  # and read, below
        _settings(_component(component))  # valid values, or a ValidationError


def test_the_secret_the_deployments_read_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for component in ("api", "worker"):
        refs = [s["secretRef"]["name"] for s in _container(_component(component))["envFrom"]
                if "secretRef" in s]
        assert refs == ["dispatch-secrets"], component
    command = re.search(r"kubectl create secret generic dispatch-secrets[^`]*", readme)
    assert command is not None
    assert {"DISPATCH_BROKER_URL", "DISPATCH_API_TOKEN"} <= set(
        re.findall(r"--from-literal=(DISPATCH_[A-Z_]+)=", command.group(0)))


def test_the_api_stops_within_its_termination_grace() -> None:
    api = _component("api")
    spec, container = api["spec"]["template"]["spec"], _container(api)
    command = container["command"]
    uvicorn = int(command[command.index("--timeout-graceful-shutdown") + 1])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + uvicorn + _settings(api).shutdown_grace
    assert spec["terminationGracePeriodSeconds"] > needed


def test_the_worker_finishes_its_longest_job_within_its_termination_grace() -> None:
    worker = _component("worker")
    settings = _settings(worker)
    for module in settings.task_modules:
        importlib.import_module(module)
    timeouts = [t.spec.timeout for t in all_tasks()
                if t.spec.fn.__module__ in settings.task_modules and t.spec.timeout]
    assert timeouts  # the example's report task has one
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > max([*timeouts, settings.shutdown_grace])


def test_api_probes_and_ports_are_what_the_api_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_DATA_DIR", str(tmp_path))  # the example app checks it at start
    api = _component("api")
    container = _container(api)
    command = shlex.join(container["command"])
    app_path = container["command"][1]
    module, _, attribute = app_path.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == _port(container, "http")
    with TestClient(app) as client:
        for kind, probe in _probes(container):
            assert f"--port {_port(container, probe['port'])}" in command, kind
            assert client.get(probe["path"]).status_code == 200, kind
        assert client.get(annotations["prometheus.io/path"]).status_code == 200

    service = _one("Service", api["metadata"]["name"])
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        _port(container, port["targetPort"])


def _get(app: Any, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers: status.append(s)))
    return status[0], body


def test_worker_probes_hit_its_metrics_endpoint() -> None:
    worker = _component("worker")
    container, settings = _container(worker), _settings(worker)
    assert settings.metrics_host == "0.0.0.0"  # the kubelet and Prometheus reach it
    assert settings.metrics_port == _port(container, "metrics")
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    app = make_wsgi_app(scrape_registry())  # what the worker's main process serves
    assert _get(app, annotations["prometheus.io/path"])[0].startswith("200")
    for kind, probe in _probes(container):
        assert _port(container, probe["port"]) == settings.metrics_port, kind
        status, body = _get(app, probe["path"])
        assert status.startswith("200") and b"dispatch_inline_busy" in body, kind


def test_keda_scales_the_worker_deployment_on_the_backlog_gauge() -> None:
    worker = _component("worker")
    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    queue = _settings(worker).default_queue
    assert f'dispatch_backlog{{queue="{queue}"}}' in query
    # Every scraped pod reports the same fleet-wide backlog: a sum would count it once
    # per pod, and grow as the workers it adds are scraped.
    assert query.startswith("max(") and "sum(" not in query
    assert float(trigger["metadata"]["threshold"]) > 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert "dispatch_backlog" in {family.name for family in COLLECTOR.describe()}


@pytest.mark.parametrize("component", ["api", "worker"])
def test_pods_run_unprivileged_with_writable_volumes_where_needed(component: str) -> None:
    deployment = _component(component)
    container = _container(deployment)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    spool = Path(_settings(deployment).spool_path)
    data = _environment(deployment)["API_DATA_DIR"]  # the example tasks' files
    assert {"/tmp", str(spool.parent), data} <= mounts
