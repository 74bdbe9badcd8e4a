"""A message the direct consumer (``direct``) took off a queue, read as Celery's
protocol 2 and checked as strictly as Celery's own consumer does: JSON only, a
task name and an id, a body of ``[args, kwargs, embed]``. What fails is refused
with one ERROR line naming the message (``Refused``), never run."""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The only content type the worker accepts (JSON only, never pickle).
JSON = "application/json"
#: Names of the serializers other clients may use, for the refusal's line.
SERIALIZERS = {"application/x-python-serialize": "pickle", "application/x-yaml": "yaml",
               "application/x-msgpack": "msgpack", "application/data": "binary"}


class Refused(ValueError):
    """A message that is not a task message this worker may run."""


@dataclass(slots=True)
class TakenMessage:
    """One taken message: what ``CeleryWorker.execute`` reads of a Celery request
    (``id``, ``delivery_info``, our ``dispatch`` header, the ``dispatch_delivery``
    counts), and what a hand-back needs (``queue_key``, ``item`` as taken)."""

    queue_key: str
    item: str
    tag: str
    id: str
    task: str
    delivery_info: dict[str, Any]
    dispatch: dict[str, Any] | None
    dispatch_delivery: list[Any] | None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: float | None = None
    expires: float | None = None
    #: The message's headers as read (Celery's task events quote some of them).
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def payload(self) -> list[Any]:
        """The body as Celery reads it (``unknown.fail`` dead-letters its arguments)."""
        return [self.args, self.kwargs, {}]

    @property
    def counted_run(self) -> bool:
        """The take counted this delivery in the job's run count."""
        return bool(self.dispatch_delivery) and self.dispatch_delivery[0] is not None  # type: ignore[index]


class ReadAhead:
    """A message read (``read_message``) before the take's reply brings its counts:
    done while Redis runs the take, so that work is off the job's way to its start."""

    __slots__ = ("_message", "_refused", "item")

    def __init__(self, key: str, item: str) -> None:
        self.item = item
        self._message: TakenMessage | None = None
        self._refused: Refused | None = None
        try:
            self._message = read_message(key, item, None)
        except Refused as exc:
            self._refused = exc

    def counted(self, counts: list[Any] | None) -> TakenMessage:
        """The message with the take's counts; raises ``Refused`` as ``read_message``."""
        if self._message is None:
            assert self._refused is not None
            raise self._refused
        self._message.dispatch_delivery = counts
        return self._message


def describe(envelope: Any) -> str:
    """The message's task, id and content type, for a log line."""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    headers = headers if isinstance(headers, dict) else {}
    content_type = envelope.get("content-type") if isinstance(envelope, dict) else None
    return f"task={headers.get('task')!r} id={headers.get('id')!r} content-type={content_type!r}"


def delivery_tag(envelope: Any) -> str | None:
    """The message's delivery tag, if it has one (the key of kombu's entry)."""
    properties = envelope.get("properties") if isinstance(envelope, dict) else None
    tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    return tag if isinstance(tag, str) else None


def read_message(queue_key: str, item: str, counts: list[Any] | None) -> TakenMessage:
    """``item`` as taken off ``queue_key``; ``counts``: ``[runs, cancelled]`` the take
    wrote down for a message of ours (None: not counted). Raises ``Refused``."""
    try:
        envelope = json.loads(item)
    except ValueError as exc:
        raise Refused(f"refused a message that cannot be decoded: {exc}") from None
    if not isinstance(envelope, dict):
        raise Refused("refused a message that cannot be decoded: not a JSON object")
    content_type = envelope.get("content-type")
    if content_type != JSON:
        kind = SERIALIZERS.get(str(content_type), str(content_type))
        raise Refused(f"refused a message that cannot be decoded ({describe(envelope)}): "
                      f"content of type {kind} is not accepted (JSON only)")
    properties, headers = envelope.get("properties"), envelope.get("headers")
    tag = delivery_tag(envelope)
    if not isinstance(properties, dict) or not isinstance(headers, dict) or tag is None:
        raise Refused(f"refused an invalid task message ({describe(envelope)}): "
                      "no headers, properties or delivery tag")
    task_id, name = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str) or not isinstance(name, str):
        raise Refused(f"refused an invalid task message ({describe(envelope)}): "
                      "not Celery's protocol 2 (no task name or id in its headers)")
    args, kwargs = _body(envelope)
    info = properties.get("delivery_info")
    meta = headers.get("dispatch")
    return TakenMessage(
        queue_key=queue_key, item=item, tag=tag, id=task_id, task=name,
        delivery_info=info if isinstance(info, dict) else {},
        dispatch=meta if isinstance(meta, dict) else None,
        dispatch_delivery=counts, args=args, kwargs=kwargs,
        eta=_stamp(headers.get("eta")), expires=_stamp(headers.get("expires")),
        headers=headers)


def _body(envelope: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    body = envelope.get("body")
    try:
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(str(body), validate=True)
        decoded = json.loads(body) if isinstance(body, str | bytes) else body
    except (ValueError, binascii.Error) as exc:
        raise Refused(f"refused a message that cannot be decoded ({describe(envelope)}): "
                      f"{exc}") from None
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict)):
        raise Refused(f"refused an invalid task message ({describe(envelope)}): its body "
                      "is not [args, kwargs, embed]")
    return decoded[0], decoded[1]


def _stamp(value: Any) -> float | None:
    """An ISO 8601 ``eta``/``expires`` as a Unix time (None: none, or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def due_in(message: TakenMessage, now: float | None = None) -> float:
    """Seconds until the message's ``eta`` (0 or less: due)."""
    return 0.0 if message.eta is None else message.eta - (now or time.time())
