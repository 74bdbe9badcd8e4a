"""Limits as declared and as one process enforces them without Redis: ``rate_limit`` and
``concurrency`` options checked at decoration, the sliding log and the slots of
``LocalLimits``, a request's chain behind a limited job, and a cancelled job leaving the
executor's timers. The fleet-wide limiter is tested against Redis in the integration
tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from dispatcher import TaskDefinitionError, TaskHandle, cancel, task
from dispatcher.core.job import Job
from dispatcher.core.limits import LocalLimits, slot_key
from dispatcher.core.spec import RateLimit, TaskSpec, parse_rate_limit
from dispatcher.fastapi import install
from dispatcher.runtime.container import current
from tests.support import wait_until


def _noop(customer: str = "") -> None:
    """Stands for a task function."""


def _job(spec: TaskSpec, n: int, **payload: Any) -> Job:
    return Job(id=f"job-{n}", spec=spec, route="inline", queue=None, priority=5,
               payload=payload)


@pytest.mark.parametrize(("text", "count", "per"), [
    ("100/m", 100, 60.0), ("20/s", 20, 1.0), (" 5 / h ", 5, 3600.0)])
def test_rate_limits_parse(text: str, count: int, per: float) -> None:
    parsed = parse_rate_limit(text)
    assert (parsed.count, parsed.per) == (count, per)
    assert str(parsed) == f"{count}/{text.strip()[-1]}"


@pytest.mark.parametrize("bad", ["100", "100/d", "0/s", "-1/s", "1.5/s", 100, None,
                                 "100001/s"])
def test_bad_rate_limits_are_refused_naming_the_format(bad: object) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate_limit(bad)


@pytest.mark.parametrize(("options", "mentions"), [
    ({"rate_limit": "fast"}, "rate_limit must look like '100/m'"),
    ({"concurrency": 0}, "concurrency must be an int >= 1"),
    ({"concurrency": True}, "concurrency must be an int >= 1"),
    ({"concurrency_key": "customer"}, "concurrency_key needs concurrency=N"),
    ({"concurrency": 2, "concurrency_key": "account"},
     "concurrency_key 'account' is not a parameter"),
])
def test_bad_limit_options_fail_at_decoration(options: dict[str, Any], mentions: str) -> None:
    with pytest.raises(TaskDefinitionError, match=mentions):
        task(name="unit.limits.bad", **options)(_noop)


def test_declared_limits_are_in_the_spec() -> None:
    limited = task(name="unit.limits.declared", rate_limit="10/s", concurrency=3,
                   concurrency_key="customer")(_noop)
    assert limited.spec.rate_limit == RateLimit(10, 1.0, "10/s")
    assert (limited.spec.concurrency, limited.spec.concurrency_key) == (3, "customer")


def test_slot_keys_follow_the_named_argument() -> None:
    spec = TaskSpec(name="t", fn=_noop, concurrency=2, concurrency_key="customer")
    assert slot_key(spec, {"customer": "acme"}) == "t\x1facme"
    assert slot_key(spec, {"customer": 7}) == "t\x1f7"
    assert slot_key(spec, {}) == "t\x1fnull"  # a missing argument is a key of its own
    assert slot_key(TaskSpec(name="t", fn=_noop, concurrency=2), {"customer": "x"}) == "t"


def test_the_sliding_log_refuses_the_extra_start_until_the_oldest_leaves() -> None:
    spec = TaskSpec(name="unit.limits.rate", fn=_noop, rate_limit=parse_rate_limit("3/s"))
    limits = LocalLimits()
    granted = [limits.admit(_job(spec, n)) for n in range(3)]
    assert all(a.granted for a in granted)
    refused = limits.admit(_job(spec, 3))
    assert not refused.granted and refused.reason == "rate_limit"
    assert 0 < refused.wait <= 1.0
    first = granted[0].at
    assert first is not None
    while time.time() < first + 1.0:  # the limiter's own clock: a real second
        time.sleep(first + 1.0 - time.time())
    assert limits.admit(_job(spec, 3)).granted


def test_slots_are_per_key_and_given_back() -> None:
    spec = TaskSpec(name="unit.limits.slots", fn=_noop, concurrency=1,
                    concurrency_key="customer")
    limits = LocalLimits()
    acme = limits.admit(_job(spec, 1, customer="acme"))
    assert acme.granted and acme.slot == "unit.limits.slots\x1facme"
    assert limits.admit(_job(spec, 2, customer="other")).granted  # another key
    refused = limits.admit(_job(spec, 3, customer="acme"))
    assert not refused.granted and refused.reason == "concurrency"
    assert limits.admit(_job(spec, 1, customer="acme")).granted  # its holder again
    limits.release(_job(spec, 1, customer="acme"), acme)
    assert limits.admit(_job(spec, 3, customer="acme")).granted


def test_a_request_chain_waits_whole_behind_its_limited_job() -> None:
    """A request's jobs start in dispatch order: when a limit refuses one, the jobs
    after it wait with it instead of starting first."""
    gate = threading.Event()
    started: list[str] = []

    @task(name="unit.limits.one_slot", concurrency=1)
    def one_slot(label: str) -> None:
        started.append(label)
        if label == "holder":
            gate.wait(30)

    @task(name="unit.limits.free")
    def free(label: str) -> None:
        started.append(label)

    app = FastAPI()
    install(app)

    @app.post("/both")
    def both() -> dict[str, str]:
        return {"limited": one_slot.dispatch("limited").id, "free": free.dispatch("free").id}

    holder = one_slot.dispatch("holder")
    wait_until(lambda: started == ["holder"], "the holder holding the slot")
    with TestClient(app) as client:
        ids = client.post("/both").json()
        labels = {"task": "unit.limits.one_slot", "route": "inline"}
        wait_until(lambda: REGISTRY.get_sample_value(
            "dispatch_concurrency_limited_total", labels), "the limited job refused")
        gate.set()
        assert holder.get(timeout=30) is None
        for task_id, name in ((ids["limited"], "unit.limits.one_slot"),
                              (ids["free"], "unit.limits.free")):
            assert TaskHandle(task_id, name, "inline").get(timeout=30) is None
    assert started == ["holder", "limited", "free"]


def test_a_cancelled_inline_job_on_a_long_timer_no_longer_counts_as_waiting() -> None:
    """Cancelled while it waits an hour: it is REVOKED at once, no longer outstanding,
    and waiting for the executor to be idle does not wait for its timer."""

    @task(name="unit.limits.later")
    def later() -> None: ...

    handle = later.options(countdown=3600).dispatch()
    executor = current().inline_executor()
    assert executor is not None and executor.outstanding() == 1
    assert cancel(handle.id) is True
    assert handle.state() == "REVOKED"
    assert executor.outstanding() == 0
    assert executor.wait_idle(timeout=5)
