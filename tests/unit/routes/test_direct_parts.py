"""The direct consumer's pure parts: reading a taken message as Celery's consumer would
(and refusing what it would refuse), the order it takes from its lists, and how
``dispatcher worker`` lays out its processes. The consumer itself runs against a real
Redis and worker in ``tests/reliability``."""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher import task
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.direct_take import read_taken, take_counts, take_order
from dispatcher.routes.celery.protocol import queue_keys, task_message
from dispatcher.routes.celery.supervisor import DIRECT_CONSUMERS, DIRECT_NAME, DIRECT_QUEUES
from dispatcher.routes.celery.taken import ReadAhead, Refused, due_in, read_message
from dispatcher.runtime.worker_layout import CONTROL_QUEUE, direct_layout
from dispatcher.store import keys


@task(name="tests.direct.unit")
def unit(text: str = "", n: int = 0) -> None:
    """A task for the messages below."""


def ours() -> tuple[Job, dict[str, Any]]:
    made = Job(new_job_id(), unit.spec, "celery", "celery", 5, {"text": "x", "n": 2}, 2,
               "req-1", 1_733_000_000.5, False, None)
    return made, task_message(made)


def test_a_message_of_ours_reads_as_the_request_the_worker_expects() -> None:
    job, envelope = ours()
    message = read_message("celery", json.dumps(envelope), [3, False])
    assert (message.id, message.task, message.kwargs, message.args) == (
        job.id, "tests.direct.unit", {"text": "x", "n": 2}, [])
    assert message.dispatch is not None and message.dispatch["attempt"] == 2
    assert message.dispatch_delivery == [3, False] and message.counted_run
    assert message.tag == envelope["properties"]["delivery_tag"]
    assert message.delivery_info["routing_key"] == "celery"
    assert message.eta is None and due_in(message) == 0


def test_a_message_read_ahead_is_the_one_the_take_reply_completes() -> None:
    """The idle consumer reads a message while Redis writes it down: the reply's counts
    complete that reading instead of a second one; another item is read afresh."""
    _, envelope = ours()
    item = json.dumps(envelope)
    ahead = ReadAhead("celery", item)
    owed: list[str] = []
    [taken] = read_taken([["celery", item, 1, 4, 0, 1]], owed.append, ahead)
    assert taken is ahead.counted([4, False]) and taken.dispatch_delivery == [4, False]
    _, other = ours()
    [fresh] = read_taken([["celery", json.dumps(other), 1, 1, 1, 1]], owed.append, ahead)
    assert fresh is not taken and fresh.id == other["headers"]["id"]
    assert fresh.dispatch_delivery == [1, True] and owed == []


def test_a_message_refused_ahead_is_refused_once_written_down() -> None:
    """Refused while read ahead, it is refused when its reply comes, and acknowledged
    (the take wrote it down): never run."""
    envelope = ours()[1]
    envelope["content-type"] = "application/x-python-serialize"
    item = json.dumps(envelope)
    ahead = ReadAhead("celery", item)
    with pytest.raises(Refused, match="pickle"):
        ahead.counted(None)
    owed: list[str] = []
    assert read_taken([["celery", item, 1, 1, 0, 1]], owed.append, ahead) == []
    assert owed == [envelope["properties"]["delivery_tag"]]


def _foreign(body: bytes, content_type: str = "application/json",
             **headers: Any) -> str:
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": "tests.direct.unit", "id": "t-1", **headers},
        "properties": {"delivery_info": {"exchange": "", "routing_key": "celery"},
                       "body_encoding": "base64", "delivery_tag": "tag-1"},
    })


def test_a_plain_celery_message_with_a_countdown_is_not_due_yet() -> None:
    eta = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    message = read_message("celery", _foreign(json.dumps([["a"], {}, {}]).encode(), eta=eta),
                           None)
    assert message.args == ["a"] and message.dispatch is None and not message.counted_run
    assert 25 < due_in(message) <= 30


@pytest.mark.parametrize(("item", "says"), [
    ("{not json", "cannot be decoded"),
    (_foreign(b"\x80\x04pickled", "application/x-python-serialize"), "type pickle"),
    (_foreign(b"{not json"), "cannot be decoded"),
    (_foreign(json.dumps({"args": []}).encode()), "is not [args, kwargs, embed]"),
    (_foreign(json.dumps([[], {}, {}]).encode(), task=None), "protocol 2"),
])
def test_what_celerys_consumer_refuses_is_refused(item: str, says: str) -> None:
    with pytest.raises(Refused, match=re.escape(says)):
        read_message("celery", item, None)


def test_takes_go_through_each_priority_step_across_the_queues() -> None:
    a, b = queue_keys("a"), queue_keys("b")
    assert take_order(["a", "b"]) == [key for pair in zip(a, b, strict=True) for key in pair]
    assert take_counts([4, 1, 1]) == [4, True]
    assert take_counts([-1, 0, 1]) == [None, False]
    assert take_counts([-1, 0, 0]) is None  # not ours: nothing counted


def test_the_worker_lays_out_a_celery_process_and_its_consumers() -> None:
    celery, env, consumers = direct_layout(
        ["--loglevel", "DEBUG", "-c", "3", "-Q", "a,b", "--hostname=reports@box"],
        "dispatcher@%h")
    assert celery == ["--loglevel", "DEBUG", "--pool", "solo", "--concurrency", "1",
                      "--queues", CONTROL_QUEUE, "--hostname", "reports@box"]
    names = [f"reports-direct{i}@box" for i in (1, 2, 3)]
    assert env == {DIRECT_CONSUMERS: ",".join(names)}
    assert [c.env[DIRECT_NAME] for c in consumers] == names
    assert {c.env[DIRECT_QUEUES] for c in consumers} == {"a,b"}
    assert all(c.quick_restart for c in consumers)


def test_the_layout_defaults_to_the_cpu_count_and_refuses_no_consumer() -> None:
    _, _, consumers = direct_layout([], "dispatcher@%h")
    assert len(consumers) == (os.cpu_count() or 1)
    assert {c.env[DIRECT_QUEUES] for c in consumers} == {""}  # each finds its own
    with pytest.raises(ValueError, match="at least 1"):
        direct_layout(["--concurrency=0"], "dispatcher@%h")


def test_the_events_switch_is_read_once_a_second_but_with_each_job_after_a_wait() -> None:
    """A busy consumer reads the node's task-events switch at most once a second; one
    that waited on BRPOP reads it with the job it brings, so the first job after Flower
    switched the events on is never run with a stale switch."""
    from dispatcher.routes.celery.direct_events import LOOK_EVERY, TaskEvents

    events = TaskEvents(None, None, "c-direct1@h", "c@h", always=False)  # type: ignore[arg-type]
    assert events.look(100.0) == [("EXISTS", keys.events_switch("c@h"))]
    assert events.look(100.0 + LOOK_EVERY / 2) == []
    assert events.look(100.0 + LOOK_EVERY / 2, idle=True) == [
        ("EXISTS", keys.events_switch("c@h"))]
    events.seen(0, 1)
    assert events.on
    assert TaskEvents(None, None, "c", "c", always=True).look(0.0, idle=True) == []  # type: ignore[arg-type]
