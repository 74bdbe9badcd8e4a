"""Dispatch-time argument checking against the task's signature, with pydantic.

The caller's arguments are validated once, before anything is scheduled, and turned
into a JSON-ready payload so a value that cannot travel is refused in the caller.
The worker only decodes that payload back into typed values.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticSerializationError

from .argument_errors import indexed, pydantic_errors, refuse_non_finite, unserializable
from .errors import TaskDefinitionError, TaskValidationError
from .redaction import hides_secret, is_secret, reveal_secrets

_ALLOWED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _Unresolved(TaskDefinitionError):
    """Annotations that cannot be resolved (yet)."""


_REQUIRED = object()
_EXACT_FLOAT_INT = 2**53  # beyond it pydantic decides (precision, overflow)
_PLAIN_TYPES = (int, float, str, bool)


def _plain_parameters(
    parameters: list[inspect.Parameter], hints: dict[str, Any]
) -> list[tuple[str, type, Any]] | None:
    """``(name, type, default)`` per parameter if all are plain scalars, else None."""
    plain = []
    for param in parameters:
        kind = hints.get(param.name)
        if kind not in _PLAIN_TYPES:
            return None
        default = param.default
        if default is inspect.Parameter.empty:
            default = _REQUIRED
        elif default is not None and type(default) is not kind:
            return None  # e.g. ``x: float = 1``: pydantic's dump gives 1.0, leave it to it
        plain.append((param.name, kind, default))
    return plain


#: Arguments models: unknown arguments refused, and NaN and infinities (not JSON): typed
#: ones at validation, those in ``Any`` dumped as they are and refused by
#: ``refuse_non_finite``.
_ARGUMENTS = ConfigDict(extra="forbid", arbitrary_types_allowed=True, serialize_by_alias=True,
                        allow_inf_nan=False, ser_json_inf_nan="constants")


class ArgumentValidator:
    """Validates ``(*args, **kwargs)`` for one task and builds its JSON payload."""

    def __init__(self, task_name: str, fn: Callable[..., Any]) -> None:
        self.task_name = task_name
        self._fn = fn
        signature = inspect.signature(fn)
        for param in signature.parameters.values():
            if param.kind not in _ALLOWED_KINDS:
                raise TaskDefinitionError(
                    f"task {task_name!r}: parameter {param.name!r} is {param.kind.description}; "
                    "task parameters must be named (no *args, **kwargs or positional-only) "
                    "so they can be validated and sent as JSON"
                )
        self.parameters = list(signature.parameters.values())
        self.positional = [
            p.name for p in self.parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        self._model: type[BaseModel] | None = None
        self._list_adapter: TypeAdapter[list[BaseModel]] | None = None
        self._plain: list[tuple[str, type, Any]] | None = None
        self._plain_names: frozenset[str] = frozenset()
        self._secret_names: set[str] = set()
        # Build now, so definition errors surface at decoration time; forward references
        # that do not resolve yet are tried again at the first dispatch.
        with contextlib.suppress(_Unresolved):
            _ = self.model

    @property
    def model(self) -> type[BaseModel]:
        """The pydantic model of the arguments, built on first use (forward refs resolve late)."""
        if self._model is None:
            try:
                hints = typing.get_type_hints(self._fn, include_extras=True)
            except Exception as exc:  # an unresolvable annotation is a definition bug
                raise _Unresolved(
                    f"task {self.task_name!r}: cannot resolve annotations: {exc}"
                ) from exc
            # Internal field names are ours (p0, p1, ...); the parameter names are aliases,
            # so names like ``_token``, ``json`` or ``model_config`` work too.
            fields: dict[str, Any] = {}
            self._secret_names = {
                p.name for p in self.parameters if is_secret(hints.get(p.name, Any))
            }
            for param in self.parameters:
                annotation = hints.get(param.name, Any)
                if param.name not in self._secret_names and hides_secret(annotation):
                    raise TaskDefinitionError(
                        f"task {self.task_name!r}: parameter {param.name!r} holds a secret "
                        "inside a container or model; pydantic would send it masked. "
                        "Pass secrets as top-level SecretStr parameters"
                    )
            for index, param in enumerate(self.parameters):
                annotation = hints.get(param.name, Any)
                default = ... if param.default is inspect.Parameter.empty else param.default
                fields[f"p{index}"] = (annotation, Field(default, alias=param.name))
            self._plain = _plain_parameters(self.parameters, hints)
            self._plain_names = frozenset(name for name, _, _ in self._plain or ())
            self._model = create_model(f"{self.task_name}:arguments",
                                       __config__=_ARGUMENTS, **fields)
        return self._model

    @property
    def secret_names(self) -> set[str]:
        """Parameters typed ``SecretStr``: sent in clear (they must reach the task) but
        never shown in listings or logs."""
        _ = self.model
        return self._secret_names

    def _values(self, instance: BaseModel) -> dict[str, Any]:
        return {p.name: getattr(instance, f"p{i}") for i, p in enumerate(self.parameters)}

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map positional and keyword arguments onto parameter names, refusing clashes."""
        if len(args) > len(self.positional):
            raise TaskValidationError(
                self.task_name,
                [
                    {
                        "field": "(arguments)",
                        "message": f"takes {len(self.positional)} positional arguments "
                        f"but {len(args)} were given",
                    }
                ],
            )
        bound = dict(zip(self.positional, args, strict=False))
        for key, value in kwargs.items():
            if key in bound:
                raise TaskValidationError(
                    self.task_name, [{"field": key, "message": "given twice"}]
                )
            bound[key] = value
        return bound

    def validate(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(values, payload)``: typed values to call with, JSON-ready payload to send."""
        model = self.model
        if self._plain is not None:
            payload = self._plain_payload(args, kwargs)
            if payload is not None:
                return dict(payload), payload
        try:
            instance = model.model_validate(self.bind(args, kwargs))
        except ValidationError as exc:
            raise pydantic_errors(self.task_name, exc) from None
        values = self._values(instance)
        try:
            payload = instance.model_dump(mode="json", by_alias=True)
        except (PydanticSerializationError, ValueError, TypeError):
            raise unserializable(self.task_name, self.parameters, instance) from None
        refuse_non_finite(self.task_name, payload)
        reveal_secrets(self.secret_names, values, payload)
        return values, payload

    def payload(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``validate(args, kwargs)[1]``: what a dispatch needs, without the values."""
        if self._plain is not None:
            payload = self._plain_payload(args, kwargs)
            if payload is not None:
                return payload
        return self.validate(args, kwargs)[1]

    def _plain_payload(self, args: tuple[Any, ...],
                       kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The payload pydantic would build, when every parameter is a plain ``int``,
        ``float``, ``str`` or ``bool`` and every value exactly of that type (a float
        parameter also takes an int); None otherwise, and pydantic decides. The same
        answer without building a model instance: most tasks take such arguments."""
        plain = self._plain
        assert plain is not None
        if len(args) > len(self.positional) or (kwargs and not kwargs.keys() <= self._plain_names):
            return None
        payload: dict[str, Any] = {}
        for index, (name, kind, default) in enumerate(plain):
            if index < len(args):
                if name in kwargs:
                    return None  # given twice: pydantic's error message
                value = args[index]
            elif name in kwargs:
                value = kwargs[name]
            elif default is not _REQUIRED:
                payload[name] = default
                continue
            else:
                return None
            actual = type(value)
            if actual is not kind:
                if kind is not float or actual is not int or abs(value) > _EXACT_FLOAT_INT:
                    return None
                value = float(value)
            elif kind is float and not math.isfinite(value):
                return None  # pydantic refuses it, naming the argument
            payload[name] = value
        return payload

    def payloads(
        self, items: Iterable[tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """JSON-ready payloads for many calls (a ``dispatch_many``), validated and dumped
        as one list by pydantic; an error names the item: ``[3].count``.

        When every item is plain (see ``_plain_payload``) pydantic is not needed: the
        same payloads, without a model instance per item for the garbage collector to
        walk while the batch is built (~4 us per job in a 10,000-job batch)."""
        # Each item as a call: a mapping holds keyword arguments, anything else positional.
        calls: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = [
            ((), item) if isinstance(item, Mapping) else (tuple(item), {}) for item in items]
        if self._plain is not None:
            plain = []
            for args, kwargs in calls:
                payload = self._plain_payload(args, kwargs)
                if payload is None:  # pydantic decides, and names the bad items
                    break
                plain.append(payload)
            else:
                return plain
        bound = []
        for index, (args, kwargs) in enumerate(calls):
            try:
                bound.append(self.bind(args, kwargs))
            except TaskValidationError as exc:
                raise indexed(exc, index) from None
        if self._list_adapter is None:
            self._list_adapter = TypeAdapter(  # the config: a NaN in `Any` dumped as it is
                list[self.model], config=ConfigDict(ser_json_inf_nan="constants"))  # type: ignore[name-defined]
        try:
            instances = self._list_adapter.validate_python(bound)
        except ValidationError as exc:
            raise pydantic_errors(self.task_name, exc) from None
        try:
            payloads: list[dict[str, Any]] = self._list_adapter.dump_python(
                instances, mode="json", by_alias=True)
        except (PydanticSerializationError, ValueError, TypeError):
            for index, instance in enumerate(instances):
                try:
                    instance.model_dump(mode="json", by_alias=True)
                except (PydanticSerializationError, ValueError, TypeError):
                    error = unserializable(self.task_name, self.parameters, instance)
                    raise indexed(error, index) from None
            raise
        for index, payload in enumerate(payloads):
            try:
                refuse_non_finite(self.task_name, payload)
            except TaskValidationError as exc:
                raise indexed(exc, index) from None
        if self.secret_names:
            for instance, payload in zip(instances, payloads, strict=True):
                reveal_secrets(self.secret_names, self._values(instance), payload)
        return payloads

    def decode(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Turn a received JSON payload back into typed values (the worker side)."""
        model = self.model
        if self._plain is not None:
            values = self._plain_payload((), payload)
            if values is not None:
                return values
        try:
            instance = model.model_validate(dict(payload))
        except ValidationError as exc:
            raise pydantic_errors(self.task_name, exc) from None
        return self._values(instance)
