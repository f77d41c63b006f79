"""The delivery worker's Celery app and its per-process runtime (``ctrelay worker`` runs it).

Celery runs *batch-sized* work only: one ``ctrelay.drain(partition)`` task drains up to
``drain_budget_s`` of one partition (1000 entries per step), never one task per event. The broker is
the relay's Redis; the queue and every broker key live under ``<prefix>:celery`` so that several
relays (or tests) share a Redis safely. The default pool is ``threads`` with
``CTRELAY_WORKER_CONCURRENCY`` (16) threads: a drain mostly waits on CleverTap, and 15 concurrent
uploads per account need 15 drains in flight. ``--pool prefork`` works too (metrics are then
summed over the children through ``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
import structlog
from celery import Celery

from worker.core.keys import Keys
from worker.core.settings import Config
from worker.delivery.batches import Deliverer
from worker.delivery.clevertap import CleverTap
from worker.delivery.drain import Drainer, dispatch, partitions_with_work
from worker.delivery.policy import RetryPolicy
from worker.store.connections import broker, close, connect
from worker.store.deadletters import DeadLetterStore
from worker.store.slots import AccountSlots
from worker.store.streams import prune_consumers

log = structlog.get_logger("ctrelay.worker")
DRAIN_TASK = "ctrelay.drain"
TICK_TASK = "ctrelay.tick"
HOUSEKEEPING_S = 60
"""Dead letters past their retention are removed this often (by whichever worker ticks first)."""
CONSUMER_IDLE_S = 3600
"""Group consumers idle this long with nothing pending are forgotten (processes that restarted)."""


class Runtime:
    """One process's connections and services (built lazily after a prefork fork, never shared across one)."""

    def __init__(self, config: Config, send: Callable[[int], object]) -> None:
        settings = config.settings
        self.config = config
        self.settings = settings
        self.send = send
        self.keys = Keys(settings.redis_prefix)
        self.client = connect(settings, timeout_s=10, connect_timeout_s=5, health_check_interval_s=30)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        clevertap = self.clevertap = CleverTap.direct(limits, settings.upload_timeout_s)
        # a slot lives seconds past its holder's last renewal, renewed no longer than the longest request needs
        self.slots = AccountSlots(
            self.client, self.keys, settings.concurrency_cap, max_hold_s=clevertap.longest_request_s + 5
        )
        self.deliverer = Deliverer(
            self.client,
            self.keys,
            config.destinations,
            clevertap=clevertap,
            slots=self.slots,
            deadletters=DeadLetterStore(self.client, self.keys, settings.deadletter_retention),
            policy=RetryPolicy(
                window_s=settings.retry_window_s,
                backoff_min_s=settings.backoff_min_s,
                backoff_max_s=settings.backoff_max_s,
                auth_pause_s=settings.auth_pause_s,
            ),
            suppression_window_s=settings.suppression_window_s,
            commit_patience_s=settings.lease_ttl_s,
        )
        self.drainer = Drainer(
            self.deliverer,
            lease_ttl_s=settings.lease_ttl_s,
            budget_s=settings.drain_budget_s,
            read_batch=settings.read_batch,
            reclaim_idle_s=self.reclaim_idle_s,
            read_pace_s=settings.read_pace_ms / 1000,
        )

    def close(self) -> None:
        """Close this process's connections (the CleverTap client, then Redis), its liveness key deleted first."""
        self.drainer.close()
        self.clevertap.close()
        close(self.client)

    @property
    def reclaim_idle_s(self) -> float:
        """A live consumer's entries idle this long are reclaimed by the lease's holder (a dead consumer's go at
        once, :mod:`worker.delivery.drain`): ``CTRELAY_RECLAIM_IDLE_S``, at most the lease's TTL. Only the holder
        reclaims, and a drain that lost its lease sends and commits nothing more, so the entries of a worker whose
        lease expired during a Redis outage wait no longer than one lease TTL."""
        return min(self.settings.reclaim_idle_s, self.settings.lease_ttl_s)

    @property
    def marker_ttl_s(self) -> float:
        """How long a queued drain blocks re-queuing: one lease TTL. A task is lost with a SIGKILLed worker that had
        prefetched it (no ack emulation), and the partition then waits for this marker as it waits for a dead
        holder's lease (measured with the former ``max(10, 3 × drain_budget_s)`` = 15 s: the chaos loop's slowest
        runs after the lease fix waited exactly that). A marker that expires while its task is still queued (every
        thread busy) costs a second task, which finds the lease taken or nothing to do, and returns at once."""
        return self.settings.lease_ttl_s

    def dispatch(self, partitions: list[int]) -> list[int]:
        return dispatch(self.client, self.keys, partitions, self.send, self.marker_ttl_s)

    def tick(self) -> list[int]:
        """Queue drains for every partition that has work and no drain; once a minute (one worker), housekeeping.

        When Redis is full (``noeviction``), the broker refuses new tasks: the ticker then drains the busy
        partitions itself, one after the other, since delivering is what frees memory."""
        try:
            if self.client.set(self.keys.housekeeping(), os.getpid(), nx=True, ex=HOUSEKEEPING_S):
                expired = self.deliverer.deadletters.expire(time.time())
                pruned = prune_consumers(self.client, self.keys, self.settings.partitions, CONSUMER_IDLE_S)
                if expired or pruned:
                    log.info("housekeeping", deadletters_expired=expired, consumers_pruned=pruned)
        except redis.OutOfMemoryError:
            pass  # another tick, once memory is back
        busy = partitions_with_work(
            self.client,
            self.keys,
            self.settings.partitions,
            reclaim_idle_s=self.reclaim_idle_s,
            skip=set(self.drainer.active),
        )
        if not busy:
            return []
        try:
            return self.dispatch(busy)
        except Exception as exc:
            if not redis_full(exc):
                raise
            log.warning("draining_in_ticker", reason="Redis is full: the broker refuses tasks", partitions=len(busy))
            for partition in busy:
                self.drainer.drain(partition)
            return busy

    def drain(self, partition: int) -> dict[str, Any]:
        result = self.drainer.drain(partition)
        if result.more:  # the budget ran out with work left: hand over to the next task right away
            self.dispatch([partition])  # (unless a tick has queued one already: its marker is set)
        tally = result.tally
        return {
            "partition": partition,
            "acquired": result.acquired,
            "entries": result.entries,
            "retries": result.retries,
            "delivered": tally.delivered,
            "retried": tally.retried,
            "deadlettered": tally.deadlettered,
            "skipped": tally.skipped,
            "uploads": tally.uploads,
        }


def redis_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: kombu wraps redis-py's errors) is Redis refusing a write at maxmemory."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, redis.OutOfMemoryError) or "maxmemory" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def create_app(config: Config) -> tuple[Celery, Callable[[], Runtime]]:
    """The Celery app for ``config`` and the accessor of this process's :class:`Runtime`."""
    settings = config.settings
    queue = Keys(settings.redis_prefix).celery()
    where = broker(settings)
    app = Celery("ctrelay", broker=where.url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        # broker options (worker/store/connections.py): on a Redis broker no ack emulation: kombu's bookkeeping of
        # unacked messages (MULTI on the broker) is what fails on a Redis restart ("Unrecoverable error") and under
        # maxmemory; a drain lost with its worker costs nothing, as the ticker queues the partition again
        broker_transport_options=where.transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
    )
    runtimes: dict[int, Runtime] = {}
    lock = threading.Lock()

    def send(partition: int) -> None:
        app.send_task(DRAIN_TASK, args=(partition,), queue=queue)

    def runtime() -> Runtime:
        pid = os.getpid()
        with lock:
            if pid not in runtimes:
                runtimes.clear()  # a forked child drops its parent's (never reuse connections across a fork)
                runtimes[pid] = Runtime(config, send)
            return runtimes[pid]

    @app.task(name=DRAIN_TASK, ignore_result=True)
    def drain(partition: int) -> dict[str, Any]:
        """Drain one partition under its lease (batches of ≤ 1000 entries, due retries included)."""
        return runtime().drain(int(partition))

    @app.task(name=TICK_TASK, ignore_result=True)
    def tick() -> list[int]:
        """Queue drains for the partitions with work (what each worker's ticker does)."""
        return runtime().tick()

    return app, runtime
