"""Each marked line must be a mypy error: the typing test fails if one is accepted."""

from __future__ import annotations

from dispatcher import task


@task(name="typing.bad.add")
def add(x: int, y: int = 1) -> int:
    return x + y


add.dispatch("one")  # expect-error
add.dispatch(1, z=2)  # expect-error
add.options(route="elsewhere")  # expect-error
add.options(priority="urgent")  # expect-error
result: str = add(1)  # expect-error
