"""The Celery app, built from the same ``DISPATCH_*`` settings as the API.

``celery -A worker.app worker`` finds ``app`` here (``python -m worker`` builds the same).
Every ``@task`` in ``DISPATCH_TASK_MODULES`` is registered under its own name.
"""

import atexit
import os
import shutil
import tempfile

# Metrics of a prefork pool are added up from files its processes write; prometheus-client
# must see the directory before anything imports it. ``python -m worker`` gives each
# worker a fresh one; a worker started by ``celery -A worker.app worker`` makes its own.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir = tempfile.mkdtemp(prefix="dispatch-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    _owner = os.getpid()
    atexit.register(
        lambda: os.getpid() == _owner and shutil.rmtree(_metrics_dir, ignore_errors=True)
    )

from dispatcher import get_settings
from dispatcher.runtime.worker_app import create_worker_app

app = create_worker_app(get_settings())
