"""Reading kombu's ``unacked`` entries for ``dispatch_backlog``: the routing key read
from an entry's end agrees with decoding it whole, and counts split by queue."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kombu.utils.json import dumps

from dispatcher.core.job import Job
from dispatcher.core.spec import TaskSpec
from dispatcher.routes.celery.backlog import count_unacked, scale_to, unacked_queue
from dispatcher.routes.celery.protocol import task_message

KEYS = [
    "celery", "", "reports.heavy", 'say "hi"', "back\\slash", "ends in \\",
    '\\"', 'a", "b', "zürich-队列", "tab\there", "]", '"]',
]


def entry(routing_key: object, exchange: str = "", message: object = None) -> bytes:
    """An ``unacked`` value as kombu's QoS writes it: ``[message, exchange, routing_key]``."""
    body = message if message is not None else {"body": "e30=", "headers": {"q": '", "x"]'}}
    return dumps([body, exchange, routing_key]).encode()


@pytest.mark.parametrize("key", KEYS)
def test_the_routing_key_is_read_from_the_entry_end(key: str) -> None:
    for exchange in ("", "celery", 'ex"change'):
        raw = entry(key, exchange)
        assert unacked_queue(raw) == json.loads(raw)[2] == key


@pytest.mark.parametrize("key", KEYS)
def test_the_message_itself_is_not_decoded(key: str) -> None:
    tail = dumps(["", key]).encode()[1:]  # '"", "<key>"]'
    assert unacked_queue(b"[<" + b"x" * 100_000 + b">, " + tail) == key


def test_our_own_messages_as_a_worker_holds_them() -> None:
    spec = TaskSpec(name="reports.build", fn=lambda: None, is_async=False, weight=8)
    job = Job(id="job-1", spec=spec, route="celery", queue="heavy", priority=9,
              payload={"report": 'x"], "celery"]'})
    message = task_message(job)  # delivered to a worker, not acknowledged yet
    assert unacked_queue(entry("heavy", "", message)) == "heavy"


def test_other_layouts_are_decoded_whole() -> None:
    spaced = b'[{"a": 1} , "" ,  "celery" ]\n'
    compact = b'[{"a":1},"","celery"]'
    assert unacked_queue(spaced) == unacked_queue(compact) == "celery"
    assert unacked_queue(b'["celery"]') is None  # not kombu's three items
    assert unacked_queue(entry(None)) is None  # a message without routing key
    assert unacked_queue(entry(7)) is None
    assert unacked_queue(b"not json") is None
    assert unacked_queue(b'"celery"]') is None
    assert unacked_queue(b"") is None
    assert unacked_queue(b'[{}, "", "\xff"]') is None  # not UTF-8


def test_entries_are_counted_for_the_queues_asked_about_only() -> None:
    entries = [entry("celery"), entry("celery", "celery"), entry("heavy"), entry("other"),
               b"garbage"]
    assert count_unacked(entries, {"celery", "heavy", "idle"}) == Counter(
        {"celery": 2, "heavy": 1})


def test_a_partial_scan_is_scaled_to_the_whole_hash() -> None:
    found = Counter({"celery": 30, "heavy": 10})
    assert scale_to(found, read=50, total=50) == {"celery": 30, "heavy": 10}
    assert scale_to(found, read=50, total=500) == {"celery": 300, "heavy": 100}
    assert scale_to(Counter(), read=0, total=10) == {}
