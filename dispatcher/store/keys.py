"""Every Redis key the dispatcher reads or writes, named in one place.

Scripts (``lua/*.lua``) get their keys and key prefixes from here as arguments, never
as literals of their own. Record keys follow Celery's result backend
(``celery-task-meta-<id>``) so Celery's ``AsyncResult`` reads our records; queue lists
follow kombu's Redis transport (``dispatcher.routes.celery.protocol.queue_key``).

``DISPATCH_NAMESPACE`` puts ``<namespace>:`` before every one of them, as kombu's and
Celery's ``global_keyprefix`` (set from the same setting) do for theirs, so two apps
sharing a Redis database never meet. The namespace is process-wide, like the settings:
``use_namespace`` rebinds this module's names, and every caller reads them here
(``keys.JOBS_INDEX``), never copies them.
"""

from __future__ import annotations

#: ``<namespace>:``, or "" (no namespace: the key layout Flower and older data use).
PREFIX = ""

#: A job's record (Celery's result-backend key).
RECORD_PREFIX = "celery-task-meta-"
#: Sorted set of job ids scored by dispatch time: the listing's index.
JOBS_INDEX = "dispatch:jobs"
#: Per job, a list of its state changes after dispatch (JSON entries).
HISTORY_PREFIX = "dispatch:history:"
#: Per publication (``<job id>:<attempt>``): "<queue key>\n<message>" until a worker
#: starts it, then "1" (see the publish and recover scripts); a batch job's PENDING
#: record is read from it until the take writes it (``records.RedisRecordStore``).
MARKER_PREFIX = "dispatch:published:"
#: Sorted set of publications not yet started, scored by publish time (a delayed one:
#: by its due time).
INFLIGHT = "dispatch:inflight"
#: The delay store: sorted set of publications held until due, scored by due time;
#: their messages wait in their markers (see the publish and release_due scripts).
DELAYED = "dispatch:delayed"
#: kombu's hash of messages delivered and not yet acknowledged, its index by delivery
#: time, and the lock of its restore pass.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
KOMBU_UNACKED_MUTEX = "unacked_mutex"
#: Per job, how many deliveries a worker started (crash redeliveries count).
RUNS_PREFIX = "dispatch:runs:"
#: Per job, while a delivery counted in its run count has not started (see take.lua).
TAKEN_PREFIX = "dispatch:taken:"
#: One key per live dispatcher worker, by its Celery node name: its heartbeat (JSON:
#: when, its queues and task names), expiring after ``DISPATCH_WORKER_DEAD_AFTER``.
WORKER_PREFIX = "dispatch:worker:"
#: Per live worker, the delivery tags it holds (taken, not acknowledged) at its last beat.
HELD_SUFFIX = ":held"
#: Per direct consumer, "<queue list>\n<delivery tag>" of the message it took last
#: (``routes/celery/direct``): what a restarted consumer gives back at once.
HOLDING_SUFFIX = ":holding"
#: Per node with direct consumers: present while its Celery process sends task events.
EVENTS_SUFFIX = ":events"
#: Per direct consumer while it idles: what a publish needs to hand it a job (see
#: ``routes/celery/handoff.py``); its inbox of jobs handed to it, and their delivery
#: tags until its next take (held, for the rescue).
IDLE_SUFFIX = ":idle"
INBOX_SUFFIX = ":inbox"
HANDED_SUFFIX = ":handed"
#: Per queue (its lists of every priority), a sorted set of the idle keys of the
#: consumers idling on it, by time.
IDLE_PREFIX = "dispatch:idle:"
#: Sorted set of every worker that has beaten, by its last beat: where to look for them.
WORKERS = "dispatch:workers"
#: Per delivery (tag and time) given back from a dead worker: who claimed it.
RESCUE_PREFIX = "dispatch:rescue:"
#: Hash: task name -> when a live worker last advertised it (rolling deploys).
ADVERTISED = "dispatch:tasks"
#: Per job id refused as an unknown task: when a worker first handed it back.
UNKNOWN_PREFIX = "dispatch:unknown:"
#: Hash: queue -> until when a worker not ours counts as consuming it ("" -> last look).
FOREIGN_WORKERS = "dispatch:foreign"
#: Held by the worker whose turn it is to ask which workers are not ours.
FLEET_ASKING = "dispatch:fleet:asking"
#: Per API process (``<host>:<pid>``), its inline executor's last report (JSON), and a
#: sorted set of those processes by the time of their last report.
INLINE_PREFIX = "dispatch:inline:"
INLINE_PROCESSES = "dispatch:inline-processes"
#: Dead letters: a hash of entries and a sorted set by time of death.
DEAD_LETTERS = "dispatch:dead"
DEAD_LETTERS_INDEX = "dispatch:dead:index"
IDEMPOTENCY_PREFIX = "dispatch:idem:"
#: Per cancelled job: its cancel mark (kept for DISPATCH_RESULT_TTL); a sorted set of
#: the cancelled ids by time (read by a process that (re)subscribes); and the Pub/Sub
#: channel that tells every process of a cancellation at once.
CANCEL_PREFIX = "dispatch:cancel:"
CANCELS = "dispatch:cancels"
CANCELS_CHANNEL = "dispatch:cancels:channel"
#: Per schedule (a digest of task, timing and arguments): the latest tick any worker
#: evaluated, and per tick the claim of the worker that dispatches it; a hash of each
#: schedule's last dispatch (JSON: tick, task id, when).
SCHEDULE_PREFIX = "dispatch:schedule:"
SCHEDULE_RUNS = "dispatch:schedule-runs"
ADAPTIVE_PREFIX = "dispatch:adaptive:"
#: Per rate-limited task: a sorted set of its admissions by time (the sliding log) and
#: a sorted set of the jobs it told to come back, by when (spreads the waiting jobs).
RATE_PREFIX = "dispatch:rate:"
#: Per concurrency slot key: a sorted set of the jobs holding a slot, by lease expiry,
#: and a sorted set of the Celery publications waiting for one, by when they began.
SLOTS_PREFIX = "dispatch:slots:"


def record(task_id: str) -> str:
    return RECORD_PREFIX + task_id


def history(task_id: str) -> str:
    return HISTORY_PREFIX + task_id


def marker(publish_id: str) -> str:
    return MARKER_PREFIX + publish_id


def runs(task_id: str) -> str:
    return RUNS_PREFIX + task_id


def taken(task_id: str) -> str:
    return TAKEN_PREFIX + task_id


def worker(hostname: str) -> str:
    return WORKER_PREFIX + hostname


def held(hostname: str) -> str:
    return WORKER_PREFIX + hostname + HELD_SUFFIX


def holding(hostname: str) -> str:
    return WORKER_PREFIX + hostname + HOLDING_SUFFIX


def events_switch(node: str) -> str:
    return WORKER_PREFIX + node + EVENTS_SUFFIX


def idle(hostname: str) -> str:
    return WORKER_PREFIX + hostname + IDLE_SUFFIX


def inbox(hostname: str) -> str:
    return WORKER_PREFIX + hostname + INBOX_SUFFIX


def handed(hostname: str) -> str:
    return WORKER_PREFIX + hostname + HANDED_SUFFIX


def idle_set(list_key: str) -> str:
    """The idle set of the queue whose list (of any priority) is ``list_key``."""
    return IDLE_PREFIX + list_key.split(QUEUE_SEP, 1)[0]


def inline_report(process: str) -> str:
    return INLINE_PREFIX + process


def rescue(tag: str) -> str:
    return RESCUE_PREFIX + tag


def unknown(task_id: str) -> str:
    return UNKNOWN_PREFIX + task_id


def cancel(task_id: str) -> str:
    return CANCEL_PREFIX + task_id


def idempotency(task_name: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{task_name}:{key}"


def rate(task_name: str) -> str:
    return RATE_PREFIX + task_name


def rate_waiting(task_name: str) -> str:
    return f"{RATE_PREFIX}{task_name}:waiting"


def slots(slot_key: str) -> str:
    return SLOTS_PREFIX + slot_key


def slot_waiters(slot_key: str) -> str:
    return f"{SLOTS_PREFIX}{slot_key}:waiting"


def adaptive_samples(task_name: str) -> str:
    return f"{ADAPTIVE_PREFIX}{task_name}:samples"


def adaptive_state(task_name: str) -> str:
    return f"{ADAPTIVE_PREFIX}{task_name}:state"


_BASE = {name: value for name, value in dict(globals()).items()
         if name.isupper() and isinstance(value, str)
         and name not in {"PREFIX", "HELD_SUFFIX", "HOLDING_SUFFIX", "EVENTS_SUFFIX",
                          "IDLE_SUFFIX", "INBOX_SUFFIX", "HANDED_SUFFIX"}}


def use_namespace(namespace: str | None) -> None:
    """Prefix every key with ``namespace`` (None: no prefix). Called by whoever builds
    the process's objects from the settings, before any key is used."""
    prefix = f"{namespace}:" if namespace else ""
    globals()["PREFIX"] = prefix
    for name, value in _BASE.items():
        globals()[name] = prefix + value


#: What separates a queue's name from its priority step in its lists' keys (kombu's).
QUEUE_SEP = "\x06\x16"


def queue_list(key: str) -> str:
    """A kombu queue list's key (``<queue>`` or ``<queue><sep><step>``) in Redis."""
    return PREFIX + key


def unprefixed(key: str) -> str:
    """``key`` without the namespace: a queue list key back to kombu's own name."""
    return key[len(PREFIX):] if PREFIX and key.startswith(PREFIX) else key
