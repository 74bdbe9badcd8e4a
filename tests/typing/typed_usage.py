"""Checked by mypy --strict in tests/test_typing.py: the decorator keeps types."""

from __future__ import annotations

from typing import assert_type

from dispatcher import RetryPolicy, TaskHandle, task


@task(name="typing.add", weight=2, retry=RetryPolicy(max_attempts=2))
def add(x: int, y: int = 1) -> int:
    """Add two numbers."""
    return x + y


@task
async def fetch(url: str) -> bytes:
    return url.encode()


@task(weight="auto")  # adaptive routing
def resize(path: str) -> str:
    return path


assert_type(add.spec.name, str)
assert_type(add(1, 2), int)
assert_type(add.dispatch(1, y=2), TaskHandle)
assert_type(add.options(route="celery", priority="high", countdown=1.5).fn(1, 2), int)
assert_type(add.options(queue="heavy").dispatch(3), TaskHandle)
assert_type(add.dispatch_many([(1, 2), {"x": 3}]), list[TaskHandle])
assert_type(fetch.dispatch("https://example.com"), TaskHandle)
assert_type(resize.dispatch("a.png"), TaskHandle)
