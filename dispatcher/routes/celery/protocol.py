"""Celery protocol-2 messages, laid out the way kombu's Redis transport stores them.

A stock ``celery worker`` and Flower understand these messages unchanged; our extra
facts (attempt, request id, dispatch time) ride in one ``dispatch`` header. Priorities
map onto kombu's Redis priority lists, where 0 is served first: our 9 (most urgent)
becomes Celery's 0.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import re
import socket
from collections.abc import Sequence
from typing import Any

import redis

from ...core.job import Job
from ...store import keys

#: kombu's Redis transport: priority lists ``queue``, ``queue\x06\x163`` ... (0 served first).
PRIORITY_STEPS = (0, 3, 6, 9)
QUEUE_SEP = keys.QUEUE_SEP
HEADER = "dispatch"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"

def celery_priority(priority: int) -> int:
    """Our 0-9 scale (9 most urgent) onto kombu-Redis's (0 served first)."""
    return 9 - priority


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu keeps for ``queue`` at our ``priority``."""
    return _queue_key(keys.PREFIX, queue, priority)


@functools.lru_cache(maxsize=1024)
def _queue_key(namespace: str, queue: str, priority: int) -> str:
    """``queue_key`` under the namespace in use (kept: it is asked on every dispatch)."""
    wire = celery_priority(priority)
    step = max(s for s in PRIORITY_STEPS if s <= wire)
    return keys.queue_list(queue if step == 0 else f"{queue}{QUEUE_SEP}{step}")


def queue_keys(queue: str) -> list[str]:
    """Every Redis list kombu may keep for ``queue`` (one per priority step)."""
    return [keys.queue_list(queue if step == 0 else f"{queue}{QUEUE_SEP}{step}")
            for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue, all priorities together (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    counts = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {q: int(sum(counts[i * steps:(i + 1) * steps])) for i, q in enumerate(queues)}


_EMBED = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def encode_body(payload: dict[str, Any]) -> str:
    """Protocol 2's ``[args, kwargs, embed]`` body, JSON then base64 as kombu stores it."""
    body = "[[], " + json.dumps(payload) + _EMBED
    return base64.b64encode(body.encode()).decode()


class MessageTemplate:
    """The message of jobs that differ only in id and arguments (a ``dispatch_many``
    batch), serialised once: each job's message is the template with its id and body
    substituted, and its size is known before it is built."""

    def __init__(self, first: Job, record_at_take: bool = False) -> None:
        self._id_token, self._body_token = f"<{os.urandom(8).hex()}>", f"<{os.urandom(8).hex()}>"
        envelope = task_message(dataclasses.replace(first, id=self._id_token), record_at_take)
        envelope["body"] = self._body_token
        self.text = json.dumps(envelope)
        self._ids = self.text.count(self._id_token)
        self._fixed = (len(self.text) - self._ids * len(self._id_token)
                       - len(self._body_token))

    def size(self, job_id: str, body: str) -> int:
        """The length of ``render(job_id, body)``, without building it."""
        return self._fixed + self._ids * len(job_id) + len(body)

    def render(self, job_id: str, body: str) -> str:
        return self.text.replace(self._id_token, job_id).replace(self._body_token, body)


#: ``message_json``'s templates: a job shape's message cut into literal text and
#: stand-ins (the parts that differ per job).
_templates: dict[tuple[str, str | None, int, int], list[str]] = {}
_TEMPLATES_KEPT = 1000
_STAND_IN = os.urandom(6).hex()
_ID, _BODY, _REQUEST, _AT = (f"<{name}-{_STAND_IN}>" for name in ("id", "body", "req", "at"))
_CUT = re.compile("(" + "|".join(re.escape(t) for t in (_ID, _BODY, _REQUEST, _AT)) + ")")


def message_json(job: Job) -> str:
    """``json.dumps(task_message(job))``, from a template per task, queue, priority and
    attempt: filling in the id, body, request id and dispatch time costs a fraction of
    building and encoding the whole envelope (~16 us) on every dispatch."""
    if job.queued_at is not None:
        return json.dumps(task_message(job))
    key = (job.spec.name, job.queue, job.priority, job.attempt)
    parts = _templates.get(key)
    if parts is None:
        envelope = task_message(dataclasses.replace(job, id=_ID))
        envelope["body"] = _BODY
        envelope["headers"][HEADER].update(request_id=_REQUEST, dispatched_at=_AT)
        text = json.dumps(envelope).replace(f'"{_REQUEST}"', _REQUEST)
        text = text.replace(f'"{_AT}"', _AT)
        parts = _CUT.split(text)
        if text.count(_STAND_IN) != 7:  # a name that holds a stand-in: no template
            return json.dumps(task_message(job))
        if len(_templates) >= _TEMPLATES_KEPT:
            _templates.clear()
        _templates[key] = parts
    values = {_ID: job.id, _BODY: encode_body(job.payload), _AT: repr(job.dispatched_at),
              _REQUEST: "null" if job.request_id is None else json.dumps(job.request_id)}
    return "".join([values.get(part, part) for part in parts])


def task_message(job: Job, record_at_take: bool = False) -> dict[str, Any]:
    """The kombu envelope of a Celery protocol-2 message for ``job``; ``record_at_take``:
    its PENDING record is left to the worker's take (``core.record.implied_pending``).

    Never with an ``eta``: a delayed job waits in the dispatcher's delay store and is
    published when due (a Celery worker would hold an eta message unacknowledged in
    memory, and Redis would hand it to a second worker after the visibility timeout).
    """
    wire_priority = celery_priority(job.priority)
    meta = job.meta()
    if record_at_take:
        meta.update(record_at="take", max_attempts=job.spec.retry.max_attempts)
    return {
        "body": encode_body(job.payload),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": job.spec.name,
            "id": job.id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": job.attempt - 1,
            "timelimit": [None, None],
            "root_id": job.id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": "{...}",  # arguments may hold secrets: never echoed in events
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            HEADER: meta,
        },
        "properties": {
            "correlation_id": job.id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": job.queue},
            "priority": wire_priority,
            "body_encoding": "base64",
            "delivery_tag": job.publish_id,  # unique per publication, as kombu needs
        },
    }
