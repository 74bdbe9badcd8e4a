"""The Lua scripts, kept as ``lua/*.lua`` package files and loaded once.

Scripts that take a batch start with ``lua/helpers.lua`` (see ``link.join_fields``);
a ``prelude`` is another shared part put before a script (a function it calls).
``Script.evalsha_args`` gives the arguments of an ``EVALSHA`` without a round trip
to ask whether Redis knows the script; callers load it on ``NoScriptError``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources


class Script:
    def __init__(self, name: str, *, helpers: bool = False, prelude: str | None = None) -> None:
        self.name = name
        body = _read(name)
        if prelude is not None:  # a shared function the script calls
            body = _read(prelude) + body
        self.source = (_read("helpers") + body) if helpers else body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


PUBLISH = Script("publish", helpers=True)
PUBLISH_ONE = Script("publish_one")
WRITE_RECORDS = Script("write_records", helpers=True)
RECOVER = Script("recover")
RELEASE_DUE = Script("release_due", helpers=True)
ADAPTIVE_MOVE = Script("adaptive_move")
IDEMPOTENCY_RELEASE = Script("idempotency_release")
SCHEDULE_TICK = Script("schedule_tick")
ADMIT = Script("admit")
RELEASE_SLOT = Script("release_slot", helpers=True)
RENEW_SLOTS = Script("renew_slots")
DEFER = Script("defer")
TAKE = Script("take", prelude="count_delivery")
COUNT_RUN = Script("count_run", prelude="count_delivery")
PUT_BACK = Script("put_back")
GIVE_BACK_HELD = Script("give_back_held")
