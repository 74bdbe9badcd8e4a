"""The one-job publish script (``publish_one.lua``, behind ``.dispatch()``) against a
real Redis: for every kind of job it leaves exactly what the batch script leaves for a
batch of that one job, and a second publication of the same job changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatcher.routes.celery.protocol import queue_key
from dispatcher.routes.celery.publisher import Publisher, PublishItem
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.link import pack_commands


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def _state(client: redis.Redis, now: float) -> dict[str, Any]:
    """Every key with its value (sorted-set scores relative to ``now``, rounded) and
    whether it expires within the script's time to live (± a few seconds)."""
    state: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        else:
            value = [(m, round(s - now)) for m, s in client.zrange(key, 0, -1, withscores=True)]
        state[key.decode()] = (value, round(client.ttl(key), -1))
    return state


def _item(job: str, record: bool, due: float | None) -> PublishItem:
    message = json.dumps({"id": job, "body": "x" * 300})
    pending = json.dumps({"task_id": job, "status": "PENDING"}) if record else None
    return (f"{job}:1", queue_key("q", 5), message, pending, due)


@pytest.mark.parametrize("record", [True, False], ids=["with-record", "no-record"])
@pytest.mark.parametrize("delay", [None, -5.0, 100.0], ids=["now", "past-due", "due-later"])
def test_one_job_script_leaves_what_the_batch_script_leaves(
    own_redis: EmbeddedRedis, record: bool, delay: float | None
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    publisher = Publisher(client, 600, 3600, spin=1e-4)  # as by default
    now = time.time()
    due = None if delay is None else now + delay
    states = []
    for publish in (lambda item: publisher.publish([item]), publisher.publish_one):
        client.flushdb()
        client.script_flush()  # first use: each path loads its script itself
        item = _item("job-1", record, due)
        assert publish(item) == 1
        first = _state(client, now)
        assert publish(item) == 0  # published already: nothing changes
        assert _state(client, now) == first
        states.append(first)
    assert states[0] == states[1]
    pushed = states[1].get(queue_key("q", 5))
    assert (pushed is not None) == (delay is None or delay < 0)
    assert (keys.RECORD_PREFIX + "job-1" in states[1]) == record


@pytest.mark.parametrize("due", [None, 1_700_000_123.25], ids=["now", "due-later"])
def test_the_command_packed_from_parts_is_the_command_packed_whole(
    own_redis: EmbeddedRedis, due: float | None
) -> None:
    """``publish_one`` sends its command from parts packed once (a head, a tail per
    queue): byte for byte what packing the whole command gives, on every queue, and
    under a namespace set after the publisher was made."""
    publisher = Publisher(redis.Redis.from_url(own_redis.url), 600, 3600)
    try:
        for namespace in (None, "tenant-a", None):
            keys.use_namespace(namespace)
            for queue, priority in (("q", 5), ("émails", 9), ("q", 0)):
                item = ("jöb-1:1", queue_key(queue, priority), '{"body": "ü"}', None, due)
                assert item[1].startswith(keys.PREFIX + queue)
                for now in (1_700_000_000.5, 1_700_000_001.0):
                    expected = b"".join(pack_commands([publisher.one_command(item, now)]))
                    assert publisher.packed_one(item, now) == expected
                    assert keys.INFLIGHT.encode() in expected
    finally:
        keys.use_namespace(None)
