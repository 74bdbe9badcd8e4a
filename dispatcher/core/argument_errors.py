"""``TaskValidationError`` from pydantic's errors: each item names the argument at
fault (``field``) and says what is wrong with it, in words a caller can act on."""

from __future__ import annotations

from pydantic import ValidationError

from .errors import TaskValidationError


def pydantic_errors(task_name: str, error: ValidationError) -> TaskValidationError:
    items = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        if item["loc"] and isinstance(item["loc"][0], int):  # an item of a batch
            loc = [f"[{loc[0]}]." + (".".join(loc[1:]) or "(arguments)")]
        field = ".".join(loc) if loc else "(arguments)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unexpected argument"
        items.append({"field": field, "message": message})
    return TaskValidationError(task_name, items)


def indexed(error: TaskValidationError, index: int) -> TaskValidationError:
    """``error`` for item ``index`` of a batch: each field becomes ``[index].field``."""
    return TaskValidationError(
        error.task_name,
        [{**e, "field": f"[{index}].{e['field']}"} for e in error.errors],
    )
