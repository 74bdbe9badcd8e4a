"""An async task stays an async callable, so code that calls it directly awaits it."""

from __future__ import annotations

import asyncio
import inspect

from starlette.background import BackgroundTasks

from dispatcher import task


def test_async_task_is_seen_as_a_coroutine_function_and_runs_in_background_tasks() -> None:
    ran: list[int] = []

    @task(name="unit.async_task.record")
    async def record(n: int) -> int:
        ran.append(n)
        return n

    @task(name="unit.async_task.plain")
    def plain(n: int) -> int:
        return n

    assert inspect.iscoroutinefunction(record)
    assert not inspect.iscoroutinefunction(plain)
    background = BackgroundTasks()
    background.add_task(record, 7)
    asyncio.run(background())
    assert ran == [7]
    assert list(inspect.signature(record).parameters) == ["n"]
