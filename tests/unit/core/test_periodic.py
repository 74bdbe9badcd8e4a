"""The background pass shape: errors never end the loop, expected ones are handed on,
the step chooses its next wait, and stop() ends it."""

from __future__ import annotations

import logging

from dispatcher.core.periodic import Periodic
from tests.support import wait_until


def test_a_loop_survives_errors_and_stops() -> None:
    passes: list[int] = []
    seen: list[BaseException] = []

    def step() -> float:
        passes.append(len(passes))
        if len(passes) == 1:
            raise ConnectionError("redis away")
        if len(passes) == 2:
            raise ValueError("a bug")
        return 0.0  # at once: the step asks for no wait

    loop = Periodic("test-periodic", step, 0.01, expected=(ConnectionError,),
                    log=logging.getLogger("test"), on_expected=seen.append)
    loop.start()
    wait_until(lambda: len(passes) >= 5, "passes after both errors")
    loop.stop()
    loop.thread.join(timeout=10)
    assert not loop.thread.is_alive() and loop.stopped
    assert [type(e) for e in seen] == [ConnectionError]  # the bug was only logged
