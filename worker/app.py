"""The Celery app, built from the same ``DISPATCH_*`` settings as the API.

``celery -A worker.app worker`` finds ``app`` here; ``python -m worker`` uses it too.
Every ``@task`` in ``DISPATCH_TASK_MODULES`` is registered under its own name.
"""

from dispatcher.celery_worker import create_worker_app
from dispatcher.settings import get_settings

app = create_worker_app(get_settings())
