"""``python -m worker [celery worker options]``: ``dispatcher worker`` for this repository
(a supervised Celery worker for every registered task). ``celery -A worker.app worker``
runs the same app unsupervised, for a process manager of your own."""

import sys

from dispatcher.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
