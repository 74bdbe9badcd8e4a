"""Adaptive routing for ``@task(weight="auto")``, the Redis side: run times and routes
shared by every process (the rule itself is ``dispatcher.policy.adaptive``).

Every attempt of an auto task, on either route, reports its run time from the execution
core (``Execution.observe`` is ``AdaptiveRouter.observe_spec``): the function is the
same wherever it runs, so a task on Celery can come back once it is fast again. Run
times are buffered in memory and pushed by a background thread to a Redis list per
task (``LPUSH`` + ``LTRIM`` to ``DISPATCH_ADAPTIVE_WINDOW``), shared by every API and
worker process.

The same thread, in a process that dispatches auto tasks, reads each task's window and
its shared state (a Redis hash) about every ``REFRESH_INTERVAL`` seconds and applies
the hysteresis of ``next_route``: an inline task moves to Celery once its p95 exceeds
``DISPATCH_INLINE_MAX_SECONDS``, a task on Celery moves back once its p95 is below half
of that, and nothing moves before ``MIN_SAMPLES`` run times. A move is a
compare-and-set of the shared state, so among many processes exactly one makes it,
logs it (``task.route_changed`` on the ``dispatcher`` logger, with its reason) and
counts it in ``dispatch_route_decisions{reason="adaptive"}``.

Dispatch only reads this process's cached view (``AdaptiveRouter.auto_route``): no Redis call on the
request path. While Redis is down the buffer is kept (bounded) and pushed later, and the
cached routes stay as they were.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ..core.ports import Health
from ..core.settings import DispatcherSettings
from ..core.spec import RouteName, TaskSpec
from ..observability.metrics import EventMetrics
from ..policy.adaptive import AdaptiveState, next_route, p95
from ..policy.routing import EVENT_REASON, Cause
from . import keys
from .link import as_text
from .scripts import ADAPTIVE_MOVE

log = logging.getLogger("dispatcher.adaptive")

#: Seconds between two refreshes of this process's view (and pushes of run times).
REFRESH_INTERVAL = 0.5
#: Seconds the refresher leaves Redis alone after a failed call.
BACKOFF = 5.0

def _parse_state(raw: Mapping[Any, Any], values: list[float]) -> AdaptiveState:
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    since = fields.get("since")
    return AdaptiveState(
        route="celery" if fields.get("route") == "celery" else "inline",
        reason=fields.get("reason") or "starts inline",
        since=float(since) if since else None,
        p95=p95(values),
        samples=len(values),
    )


def _floats(raw: Sequence[Any]) -> list[float]:
    values = []
    for item in raw:
        try:
            values.append(float(item))
        except ValueError:
            continue
    return values


class AdaptiveRouter:
    """This process's side of adaptive routing: the run-time buffer, the cached routes
    and the background thread that pushes the one and refreshes the other."""

    def __init__(self, settings: DispatcherSettings, client: redis.Redis | None,
                 health: Health, metrics: EventMetrics | None = None) -> None:
        self.settings = settings
        self._metrics = metrics if metrics is not None else EventMetrics()
        self._client = client
        self._health = health
        self._lock = threading.Lock()
        self._pending: dict[str, list[float]] = {}
        self._states: dict[str, AdaptiveState] = {}
        self._watched: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = 0
        self._down_until = 0.0
        self._cas: Any = None

    # -- hot path: memory only ----------------------------------------------------------
    def observe(self, name: str, seconds: float) -> None:
        """Note one run time of ``name``; pushed to Redis by the background thread."""
        self._after_fork()
        with self._lock:
            buffer = self._pending.setdefault(name, [])
            buffer.append(seconds)
            if len(buffer) > self.settings.adaptive_window:  # only the newest count
                del buffer[: -self.settings.adaptive_window]
            self._ensure_thread()

    def state(self, name: str) -> AdaptiveState | None:
        """The cached state of ``name`` (None until first read); starts watching it."""
        if name not in self._watched or self._pid != os.getpid():
            self._after_fork()
            with self._lock:
                self._watched.add(name)
                self._ensure_thread()
        return self._states.get(name)

    # -- background -------------------------------------------------------------------
    def _after_fork(self) -> None:
        """A forked child (a Celery pool process) starts with a fresh buffer and thread."""
        if self._pid not in (0, os.getpid()):
            self._lock = threading.Lock()
            self._pending, self._states, self._watched = {}, {}, set()
            self._thread, self._stop, self._pid = None, threading.Event(), 0

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="dispatch-adaptive",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            try:
                self.sync()
            except Exception as exc:  # a bug here must not end the thread
                log.warning("adaptive routing refresh failed: %s: %s", type(exc).__name__, exc)

    def close(self) -> None:
        self._stop.set()

    def sync(self, *, decide: bool = True) -> None:
        """Push buffered run times, re-read the watched tasks, move those that must
        (once, by compare-and-set) and update the cached view. Skipped while Redis is
        known to be down."""
        client = self._client
        if client is None or time.monotonic() < self._down_until:
            return
        if not self._health.available():
            return
        with self._lock:
            pending, self._pending = self._pending, {}
            watched = sorted(self._watched)
        try:
            self._exchange(client, pending, watched, decide)
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + BACKOFF
            log.debug("adaptive routing: Redis unavailable (%s); run times kept", exc)
            with self._lock:  # put them back, newest last, still bounded by the window
                for name, values in pending.items():
                    merged = values + self._pending.get(name, [])
                    self._pending[name] = merged[-self.settings.adaptive_window:]

    def _exchange(self, client: redis.Redis, pending: dict[str, list[float]],
                  watched: list[str], decide: bool) -> None:
        window, ttl = self.settings.adaptive_window, self.settings.result_ttl
        pipe = client.pipeline(transaction=False)
        for name, values in pending.items():
            key = keys.adaptive_samples(name)
            pipe.lpush(key, *[f"{v:.6f}" for v in values])
            pipe.ltrim(key, 0, window - 1)
            pipe.expire(key, ttl)
            pipe.expire(keys.adaptive_state(name), ttl)  # a task that keeps running keeps its state
        for name in watched:
            pipe.lrange(keys.adaptive_samples(name), 0, window - 1)
            pipe.hgetall(keys.adaptive_state(name))
        results = pipe.execute()[len(pending) * 4:]
        for index, name in enumerate(watched):
            values = _floats(results[2 * index])
            state = _parse_state(results[2 * index + 1], values)
            if decide:
                state = self._maybe_move(client, name, state, values)
            self._states[name] = state

    def _maybe_move(self, client: redis.Redis, name: str, state: AdaptiveState,
                    values: list[float]) -> AdaptiveState:
        move = next_route(state.route, values, self.settings.inline_max_seconds)
        if move is None:
            return state
        route, reason = move
        if self._cas is None:
            self._cas = client.register_script(ADAPTIVE_MOVE.source)
        now = time.time()
        won = self._cas(keys=[keys.adaptive_state(name)],
                        args=[state.route, route, repr(now), reason, self.settings.result_ttl])
        if not won:  # another process moved it first: read what it decided
            window = self.settings.adaptive_window
            values = _floats(client.lrange(keys.adaptive_samples(name), 0, window - 1))
            return _parse_state(client.hgetall(keys.adaptive_state(name)), values)
        announce(name, state.route, route, reason, state, self._metrics)
        return AdaptiveState(route, reason, now, state.p95, state.samples)

    def read(self, names: Sequence[str]) -> dict[str, AdaptiveState]:
        """The shared state of ``names``, read now (the routes table; not for dispatch).
        Falls back to the cached view when Redis cannot be read."""
        client = self._client
        if client is None or not names:
            return {}
        if time.monotonic() >= self._down_until and self._health.available():
            try:
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.lrange(keys.adaptive_samples(name), 0, self.settings.adaptive_window - 1)
                    pipe.hgetall(keys.adaptive_state(name))
                results = pipe.execute()
                return {
                    name: _parse_state(results[2 * i + 1], _floats(results[2 * i]))
                    for i, name in enumerate(names)
                }
            except (redis.RedisError, OSError) as exc:
                log.debug("adaptive state not read: %s", exc)
        return {name: state for name in names if (state := self._states.get(name)) is not None}


    def observe_spec(self, spec: TaskSpec, seconds: float) -> None:
        """Called by the execution core after each attempt that ran; cheap, never raises."""
        if not spec.adaptive or self._client is None:
            return
        try:
            self.observe(spec.name, seconds)
        except Exception as exc:
            log.debug("run time of %s not observed: %s", spec.name, exc)

    def auto_route(self, spec: TaskSpec) -> tuple[RouteName, str] | None:
        """The adaptive route of an auto task for ``decide_route``, from memory; None for
        other tasks and for an auto task not moved yet (or not read yet)."""
        if not spec.adaptive or self._client is None:
            return None
        state = self.state(spec.name)
        if state is None or state.since is None:
            return None
        return state.route, state.reason


def announce(name: str, previous: RouteName, route: RouteName, reason: str,
             state: AdaptiveState, metrics: EventMetrics) -> None:
    """Log and count one route change (done once, by the process that made it)."""
    metrics.count_route_decision(name, route, EVENT_REASON[Cause.ADAPTIVE])
    fields = {
        "event": "task.route_changed",
        "task_name": name,
        "route": route,
        "previous_route": previous,
        "reason": reason,
        "p95_ms": None if state.p95 is None else round(state.p95 * 1000, 3),
        "samples": state.samples,
    }
    log.info("task.route_changed", extra={"dispatch": fields})
