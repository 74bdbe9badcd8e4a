"""Start-up configuration check: refuse settings that would lose or duplicate jobs, or
run untrusted content. The worker and ``install(app)`` call it before serving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.errors import ConfigurationError
from ..core.registry import all_tasks
from ..core.settings import DispatcherSettings

_INSECURE_CERT_REQS = {"none", "cert_none", "optional", "cert_optional"}


def problems(settings: DispatcherSettings, celery_conf: Any = None) -> list[str]:
    """Every contradiction found, as readable sentences (empty when all is well)."""
    found = []
    visibility = settings.visibility_timeout
    for task in all_tasks():
        spec = task.spec
        if spec.timeout is not None and spec.timeout >= visibility:
            found.append(
                f"task {spec.name!r} has timeout {spec.timeout:g}s >= DISPATCH_VISIBILITY_TIMEOUT"
                f" {visibility}s: Redis would hand it to a second worker while it still runs"
            )
    if celery_conf is not None:
        for key in ("accept_content", "result_accept_content"):
            content = [str(c).lower() for c in (celery_conf.get(key) or [])]
            if any("pickle" in c for c in content):
                found.append(f"Celery {key} allows pickle; only JSON is accepted")
        for key in ("task_serializer", "result_serializer", "event_serializer"):
            if "pickle" in str(celery_conf.get(key) or "").lower():
                found.append(f"Celery {key} is pickle; only JSON is accepted")
    if settings.broker_url is not None:
        folder = Path(settings.spool_path).resolve().parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not os.access(existing, os.W_OK):
            found.append(
                f"DISPATCH_SPOOL_PATH {settings.spool_path} is not writable: jobs accepted "
                "during a broker outage could not be kept"
            )
    for name in ("broker_url", "result_backend_url"):
        url = getattr(settings, name)
        if url is None or urlsplit(url).scheme != "rediss" or settings.allow_insecure_tls:
            continue
        query = {k.lower(): v for k, v in parse_qs(urlsplit(url).query).items()}
        reqs = (query.get("ssl_cert_reqs") or [""])[0].lower()
        if reqs in _INSECURE_CERT_REQS:
            found.append(
                f"DISPATCH_{name.upper()} uses rediss:// with ssl_cert_reqs={reqs}: the server "
                "certificate is not verified (set DISPATCH_ALLOW_INSECURE_TLS=true to allow)"
            )
    return found


def check_configuration(settings: DispatcherSettings, celery_conf: Any = None) -> None:
    """Raise ``ConfigurationError`` listing every problem found."""
    found = problems(settings, celery_conf)
    if found:
        raise ConfigurationError("refusing to start: " + "; ".join(found))
