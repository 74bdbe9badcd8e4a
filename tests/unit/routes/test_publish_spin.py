"""Which one-by-one publishes spin for their reply (``Publisher.publish_one``): only a
thread that publishes alone. A fake connection records the spin each read was given
(the spin itself, against real sockets, is in tests/unit/store/test_resp.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from dispatcher.routes.celery.publisher import Publisher, PublishItem

SPIN = 1e-4
ITEM: PublishItem = ("job-1:1", "celery", "{}", None, None)


class FakeLink:
    """Answers every publish with 1; a read can be held until ``release`` is set."""

    def __init__(self, spins: list[float], hold: threading.Event | None = None,
                 reading: threading.Event | None = None) -> None:
        self.spins, self.hold, self.reading = spins, hold, reading

    def send_packed(self, data: bytes) -> None:
        assert data.startswith(b"*17\r\n")

    def read(self, spin: float = 0.0) -> Any:
        self.spins.append(spin)
        if self.reading is not None:
            self.reading.set()
        if self.hold is not None:
            assert self.hold.wait(60), "never released"
        return 1


def _publisher() -> Publisher:
    return Publisher(redis.Redis(), 600, 3600, spin=SPIN)  # never connected


def _publish_from_new_thread(publisher: Publisher, link: FakeLink) -> threading.Thread:
    def publish() -> None:
        publisher._local.link = link
        publisher.publish_one(ITEM)

    thread = threading.Thread(target=publish)
    thread.start()
    return thread


def test_a_thread_that_keeps_publishing_alone_spins() -> None:
    publisher, spins = _publisher(), []
    publisher._local.link = FakeLink(spins)
    for _ in range(3):
        assert publisher.publish_one(ITEM) == 1
    assert spins == [0.0, SPIN, SPIN]  # the first: not yet known as the last publisher
    other: list[float] = []
    _publish_from_new_thread(publisher, FakeLink(other)).join()
    assert other == [0.0]  # another thread took over: no spin at first
    publisher.publish_one(ITEM)
    assert spins[-1] == 0.0  # and the first thread is no longer the last one


def test_no_spin_while_another_publish_waits_for_its_reply() -> None:
    publisher, spins = _publisher(), []
    publisher._local.link = FakeLink(spins)
    publisher.publish_one(ITEM)
    held, reading, release = [], threading.Event(), threading.Event()
    thread = _publish_from_new_thread(publisher, FakeLink(held, release, reading))
    assert reading.wait(60)  # the other thread waits for its reply now
    publisher.publish_one(ITEM)
    publisher.publish_one(ITEM)
    release.set()
    thread.join()
    assert spins[1:] == [0.0, 0.0]  # never alone while the other waited
    publisher.publish_one(ITEM)
    publisher.publish_one(ITEM)
    assert spins[-1] == SPIN  # alone again


def test_a_failed_read_leaves_no_publish_counted_as_waiting() -> None:
    publisher, spins = _publisher(), []

    class Broken(FakeLink):
        def read(self, spin: float = 0.0) -> Any:
            raise redis.ConnectionError("gone")

    publisher._local.link = Broken(spins)
    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            publisher.publish_one(ITEM)
    publisher._local.link = FakeLink(spins)
    publisher.publish_one(ITEM)
    assert spins == [SPIN]  # alone: nothing left counted from the failed ones
