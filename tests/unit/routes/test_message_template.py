"""``message_json`` (a template per job shape) writes exactly what encoding the whole
envelope writes, for every kind of value that is filled in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatcher import task
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.protocol import message_json, task_message


@task(name="tests.template.unit")
def unit(text: str = "", n: int = 0) -> None:
    """A task for the template's jobs."""


def job(payload: dict[str, Any], request_id: str | None, attempt: int = 1,
        queue: str = "celery", priority: int = 5) -> Job:
    return Job(new_job_id(), unit.spec, "celery", queue, priority, payload, attempt,
               request_id, 1_733_000_000.123456, False, None)


@pytest.mark.parametrize(("payload", "request_id"), [
    ({}, None),
    ({"text": 'quote " backslash \\ nul \x00 é ✓', "n": 3}, "req-1"),
    ({"text": "<id-stand-in>"}, 'a "quoted" request id'),
])
def test_the_template_writes_what_the_envelope_encodes(payload: dict[str, Any],
                                                       request_id: str | None) -> None:
    for made in (job(payload, request_id), job(payload, request_id, attempt=3),
                 job(payload, request_id, queue="emails", priority=9)):
        assert message_json(made) == json.dumps(task_message(made))
        again = job(payload, request_id)  # the second job of a shape uses the template
        assert message_json(again) == json.dumps(task_message(again))


def test_a_delayed_job_takes_the_full_encoding_and_never_an_eta() -> None:
    made = job({"n": 1}, None)
    made.queued_at = made.dispatched_at + 30
    decoded = json.loads(message_json(made))
    assert decoded["headers"]["dispatch"]["queued_at"] == made.queued_at
    assert decoded["headers"]["eta"] is None and decoded["headers"]["id"] == made.id
