"""The worker main process's background duties, in one thread: beat (``liveness``),
take a turn at watching for other kinds of worker (``fleet``), re-queue publications
Redis lost (``recovery``) and give back what dead workers held (``rescue``); and, in a
thread of its own (it wakes far more often), publish delayed jobs when due (``delayed``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import OperationalError

from ...core.periodic import Periodic
from ...core.registry import all_tasks
from .delayed import DelayRelay
from .direct_events import answer_for_consumers, publish_switch, task_events_on
from .fleet import Fleet
from .liveness import Heartbeat, beat_pause, consumer_holdings
from .monitor import BROKER_ERRORS
from .recovery import Sweeper
from .rescue import Rescuer
from .route import CeleryRoute

log = logging.getLogger("dispatcher.worker")

#: A broker outage: the pass waits for the next one (``OperationalError``: inspect's).
SWEEP_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, OperationalError)


class Upkeep:
    """Built when the worker is ready (``consumer``: Celery's, the worker_ready sender)."""

    def __init__(self, route: CeleryRoute, consumer: Any, direct: Sequence[str] = ()) -> None:
        settings = route.settings
        client = route.monitor.publisher.client
        hostname = str(consumer.hostname)
        self.pause = beat_pause(settings.requeue_lost_after, settings.worker_dead_after)
        held, queues = consumer_holdings(consumer)
        self.heartbeat = Heartbeat(client, hostname, settings.worker_dead_after,
                                   [t.spec.name for t in all_tasks()], held, queues)
        self.fleet = Fleet(route.app, client, hostname, every=self.pause,
                           memory=settings.result_ttl)
        self.sweeper = Sweeper(client, settings.requeue_lost_after,
                               sightings=self.fleet.sightings)
        self.rescuer = Rescuer(route.app, client, hostname, self.fleet.sightings)
        self.delayed = DelayRelay(client)
        #: This node's direct consumers (``direct``): told whether to send task events.
        self.direct = list(direct)
        self.consumer = consumer
        self.client = client
        self.loop = Periodic("dispatch-upkeep", self.run_once, self.pause,
                             expected=SWEEP_ERRORS, log=log)

    def start(self) -> Upkeep:
        self.loop.start()
        self.delayed.start()
        return self

    def stop(self) -> None:
        """On a clean shutdown: stop beating and say so (kombu gives back what we held)."""
        self.loop.stop()
        self.delayed.stop()
        try:
            self.heartbeat.stop()
        except SWEEP_ERRORS as exc:
            log.debug("could not remove the heartbeat: %s", exc)

    def run_once(self) -> None:
        if self.loop.stopped:
            return
        self.heartbeat.beat()
        if self.direct:
            publish_switch(self.client, self.heartbeat.hostname, task_events_on(self.consumer))
        self.fleet.observe()
        self.sweeper.sweep()
        self.rescuer.rescue()

def start_upkeep(route: CeleryRoute, consumer: Any, direct: Sequence[str] = ()) -> Upkeep:
    """The upkeep of a Celery worker process; ``direct``: the hostnames of the direct
    consumers beside it, whose jobs and queues ``inspect`` then lists too."""
    if direct:
        answer_for_consumers(route.monitor.publisher.client, list(direct))
    return Upkeep(route, consumer, direct).start()
