"""The Celery worker of the dispatcher: ``python -m worker`` or ``celery -A worker.app worker``."""
