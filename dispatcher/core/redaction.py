"""Secrets never shown: which arguments are secret, and hiding their values.

A task's ``SecretStr`` parameters and the names in ``DISPATCH_REDACT`` travel in clear
(the task must receive them) but are replaced in listings, logs, errors and tracebacks.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "***"


def is_secret(annotation: Any) -> bool:
    """A top-level ``SecretStr`` parameter (possibly optional)."""
    if annotation is SecretStr:
        return True
    args = typing.get_args(annotation)
    return bool(args) and all(a is SecretStr or a is type(None) for a in args)


def hides_secret(annotation: Any, seen: set[int] | None = None) -> bool:
    """Whether a secret type hides inside a container or model annotation."""
    seen = set() if seen is None else seen
    if id(annotation) in seen:
        return False
    seen.add(id(annotation))
    if annotation in (SecretStr, SecretBytes):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(hides_secret(f.annotation, seen) for f in annotation.model_fields.values())
    return any(hides_secret(arg, seen) for arg in typing.get_args(annotation))


def reveal_secrets(
    names: Iterable[str], values: Mapping[str, Any], payload: dict[str, Any]
) -> None:
    """Put the real value of each ``SecretStr`` argument into ``payload``: pydantic
    masks secrets when dumping, and the task must receive them (logs never do)."""
    for name in names:
        secret = values.get(name)
        if isinstance(secret, SecretStr):
            payload[name] = secret.get_secret_value()


def secret_values(payload: Mapping[str, Any], names: set[str]) -> list[str]:
    """The string values of the secret arguments in ``payload``, longest first, to
    scrub from errors and tracebacks."""
    values = {str(v) for n, v in payload.items() if n in names and v not in (None, "")}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_arguments(arguments: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
    """A copy of ``arguments`` safe to show: secret ones replaced."""
    return {name: REDACTED if name in names else value for name, value in arguments.items()}
