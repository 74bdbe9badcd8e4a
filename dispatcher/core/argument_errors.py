"""``TaskValidationError`` from pydantic's errors: each item names the argument at
fault (``field``) and says what is wrong with it, in words a caller can act on."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

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


def refuse_non_finite(task_name: str, payload: Mapping[str, Any]) -> None:
    """Raise ``TaskValidationError`` naming the first NaN or infinity in ``payload``
    (``items[2].score``): JSON has neither, and pydantic's JSON dump would quietly turn
    one held by an ``Any`` or ``object`` parameter into ``null``."""
    for name, value in payload.items():
        path = _non_finite(value, name)
        if path is not None:
            raise TaskValidationError(task_name, [{
                "field": path, "message": "NaN and infinities cannot be sent as JSON"}])


def _non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float):  # numpy's float64 too
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := _non_finite(item, f"{path}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _non_finite(item, f"{path}[{index}]")) is not None:
                return found
    return None


def unserializable(task_name: str, parameters: Sequence[inspect.Parameter],
                   instance: BaseModel) -> TaskValidationError:
    """The error for an arguments model ``instance`` that pydantic cannot dump as JSON,
    naming the first parameter (field ``p<index>``) at fault."""
    for index, param in enumerate(parameters):
        try:
            instance.model_dump(mode="json", include={f"p{index}"})
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            value_type = type(getattr(instance, f"p{index}")).__name__
            return TaskValidationError(task_name, [{
                "field": param.name,
                "message": f"{value_type} value cannot be sent as JSON ({exc})"}])
    return TaskValidationError(
        task_name, [{"field": "(arguments)", "message": "cannot be sent as JSON"}])
