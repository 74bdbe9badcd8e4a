"""``python -m worker [celery worker options]``: a worker consuming every task queue."""

from __future__ import annotations

import sys

from dispatcher.celery_route import worker_queues
from dispatcher.errors import DispatchError
from dispatcher.settings import get_settings


def main(argv: list[str]) -> int:
    try:
        from worker.app import app
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    settings = get_settings()
    args = ["worker", "--loglevel", settings.log_level]
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in argv):
        args += ["--queues", ",".join(worker_queues(settings))]
    app.worker_main([*args, *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
