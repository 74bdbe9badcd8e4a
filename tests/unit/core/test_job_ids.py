"""Job ids: random version-4 UUIDs, unique, and never shared with a forked child."""

from __future__ import annotations

import os
import uuid

from dispatcher.core.job import new_job_id, new_request_id


def test_ids_are_version_4_uuids_and_unique_across_refills() -> None:
    ids = [new_job_id() for _ in range(2000)]  # several 256-id refills
    assert len(set(ids)) == len(ids)
    for value in ids[:50]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and str(parsed) == value


def test_a_forked_child_draws_its_own_ids() -> None:
    new_job_id()  # the parent holds partly used pools
    new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the next ids it makes, then leave at once
        os.close(read)
        drawn = [new_job_id() for _ in range(5)] + [new_request_id() for _ in range(5)]
        os.write(write, "\n".join(drawn).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent_ids = [new_job_id() for _ in range(5)] + [new_request_id() for _ in range(5)]
    assert len(child_ids) == 10 and not set(child_ids) & set(parent_ids)


def test_request_ids_are_32_hex_digits_and_unique_across_refills() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)
