"""The Celery route: publishing, the message protocol, the worker side, recovery."""
