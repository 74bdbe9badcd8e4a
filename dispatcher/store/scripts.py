"""The Lua scripts, kept as ``lua/*.lua`` package files and loaded once.

Scripts that take a batch start with ``lua/helpers.lua`` (see ``link.join_fields``);
a ``prelude`` is another shared part put before a script (functions it calls), or a
tuple of them in order.
``Script.evalsha_args`` gives the arguments of an ``EVALSHA`` without a round trip
to ask whether Redis knows the script; callers load it on ``NoScriptError``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources


class Script:
    def __init__(self, name: str, *, helpers: bool = False,
                 prelude: str | tuple[str, ...] = ()) -> None:
        self.name = name
        shared = (prelude,) if isinstance(prelude, str) else prelude
        body = "".join(_read(part) for part in shared) + _read(name)
        self.source = (_read("helpers") + body) if helpers else body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


PUBLISH = Script("publish", helpers=True)
PUBLISH_ONE = Script("publish_one", prelude=("count_delivery", "take_one"))
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
TAKE = Script("take", prelude=("count_delivery", "take_one"))
COUNT_RUN = Script("count_run", prelude="count_delivery")
PUT_BACK = Script("put_back")
GIVE_BACK_HELD = Script("give_back_held")
