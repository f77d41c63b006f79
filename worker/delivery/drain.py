"""Draining partitions: who drains which partition when, under a lease, and how a dead worker's work is reclaimed.

Scheduling is self-contained (no beat): every ``ctrelay worker`` runs a :class:`Ticker` thread that,
every ``tick_interval_s``, looks at the partitions in two pipelined round trips (:func:`partitions_with_work`:
unread entries (the stream's length less its pending entries), pending entries idle past
``reclaim_idle_s``, due retries; no lease held, no drain already queued) and queues one Celery ``drain`` task
per such partition, marking it *dispatched* (``SET NX PX``) so that several workers' tickers never queue it twice.

A drain (:meth:`Drainer.drain`) takes the partition's lease (:mod:`worker.store.lease`), then loops for up
to ``drain_budget_s``: reclaim entries left pending by other consumers (below), take the due retries, read up to
``read_batch`` new entries (``XREADGROUP``), deliver them (:mod:`worker.delivery.batches`), renew the lease. A
batch stops before its next upload or commit once the lease is lost, and when it has waited ``drain_budget_s`` for
upload slots (so a warm shutdown is not held by a starved account): its entries stay pending.
When the budget runs out with work left, the task queues its successor at once, so a busy partition is drained back
to back (full batches) while idle ones cost one cheap look per tick.

**Reclaiming** (:meth:`Drainer._reclaim`, only ever by the lease's holder). One ``XPENDING`` summary says which other
consumers hold pending entries (none: nothing more to do, the usual case). Those of a *dead* consumer, one whose
liveness key (:class:`~worker.store.lease.Liveness`, renewed by its process's keeper every third of the lease TTL) is
gone, are claimed at once, oldest first and before any new entry, whatever their idle time: its process was SIGKILLed
or OOM-killed, and nothing of it will send or commit them, so a killed worker costs its partitions about one lease
TTL (5 s) and its users' order is kept. A *live* consumer's entries are claimed only once idle for
``reclaim_idle_s``: it is alive, so its drain stopped (lost lease, no upload slot in time) or is stopping, and its own
process's next drain of the partition takes them back at once; a live drain still sending holds the lease, so no one
else can claim them. (The worker caps ``reclaim_idle_s`` at the lease TTL: a live worker whose lease expired during a
Redis outage must not hold its entries back for long.)

Every entry read a second time (a drain's first read, ``XREADGROUP ... 0``, of what its consumer left pending; the
claims) is counted in ``ctrelay_entries_read_again_total{how}`` (:mod:`worker.delivery.metrics`): Redis sends its
body again and the worker decodes it again, so operators can tell such re-reads from new work.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from worker.core.errors import DrainStopped
from worker.core.keys import GROUP, Keys
from worker.delivery import metrics
from worker.delivery.batches import Deliverer
from worker.delivery.gate import Gate
from worker.delivery.work import Folding, StreamEntry, Tally
from worker.store.connections import is_cluster
from worker.store.lease import Lease, LeaseKeeper, Liveness, alive
from worker.store.retries import RetryItem, RetrySchedule
from worker.store.streams import (
    UNREAD_COMMANDS,
    ensure_group,
    flat_pipeline,
    id_order,
    queue_unread,
    read_unread,
    text,
)

log = structlog.get_logger("ctrelay.drain")
FRESH_S = 1.0
"""A lease renewed this recently, with no wait since, is known held (:class:`Keepalive`); its TTL is seconds."""


def consumer_name() -> str:
    """This process's consumer name in the group (host and pid: a restarted process is a new consumer)."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class DrainResult:
    """What one drain did. ``more``: it stopped with work left (the budget ran out)."""

    partition: int
    acquired: bool
    entries: int = 0
    retries: int = 0
    reclaimed: int = 0
    more: bool = False
    tally: Tally = field(default_factory=Tally)


class Drainer:
    """Drains one partition at a time for this process."""

    def __init__(
        self,
        deliverer: Deliverer,
        *,
        lease_ttl_s: float = 5.0,
        budget_s: float = 5.0,
        read_batch: int = 1000,
        reclaim_idle_s: float = 60.0,
        consumer: str | None = None,
        read_pace_s: float = 0.0,
    ) -> None:
        self.deliverer = deliverer
        self.client = deliverer.client
        self.keys = deliverer.keys
        self.lease_ttl_s = lease_ttl_s
        self.budget_s = budget_s
        self.read_batch = read_batch
        self.reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self.consumer = consumer or consumer_name()
        self.read_pace_s = read_pace_s
        """The shortest time between two reads of a partition whose last read was short (``CTRELAY_READ_PACE_MS``)."""
        self.short_reads: dict[str, float] = {}
        """Per stream, when its last read short of half a batch was (monotonic): the next one waits for the pace."""
        self.keeper = LeaseKeeper(lease_ttl_s / 3)
        self.active: set[int] = set()
        """The partitions this process is draining now (the ticker need not look at them)."""
        self.liveness: Liveness | None = None
        """This consumer's liveness key, set by its first drain, then renewed by the keeper."""

    def _live(self) -> None:
        """Set this consumer's liveness key (once: the keeper renews it) before it reads any entry."""
        if self.liveness is None:
            liveness = Liveness(self.client, self.keys.alive(self.consumer), self.lease_ttl_s)
            liveness.renew()
            self.liveness = liveness
            self.keeper.hold(liveness)

    def close(self) -> None:
        """A warm shutdown, every drain done: delete the liveness key, so that whatever this consumer left pending is
        claimed at once by the partitions' next holders (best effort: else it expires one lease TTL later)."""
        if self.liveness is not None:
            self.keeper.drop(self.liveness)
            try:
                self.liveness.release()
            except redis.RedisError as exc:
                log.warning("liveness_release_failed", error=f"{type(exc).__name__}: {exc}")
            self.liveness = None

    def drain(self, partition: int) -> DrainResult:
        """Drain ``partition`` if nobody else is; returns what was done. Runs inside the process's gate
        (:mod:`worker.delivery.gate`): one drain at a time works, the others wait for CleverTap or a slot."""
        self.active.add(partition)
        try:
            with self.deliverer.gate.inside():
                return self._drain(partition)
        finally:
            self.active.discard(partition)

    def _drain(self, partition: int) -> DrainResult:
        lease = Lease.acquire(self.client, self.keys.lease(partition), self.lease_ttl_s)
        # Either way the queued drain this marker stood for is now running: clear it, so that a drain that
        # lost the race for the lease leaves no marker to hold back the next tick.
        self.client.delete(self.keys.dispatched(partition))
        if lease is None:
            return DrainResult(partition, acquired=False)
        self.keeper.hold(lease)
        try:
            self._live()
        except BaseException:
            self.keeper.drop(lease)
            lease.release()
            raise
        result = DrainResult(partition, acquired=True)
        stream = self.keys.stream(partition)
        schedule = RetrySchedule(self.client, self.keys, partition)
        deadline = time.monotonic() + self.budget_s
        cursor: str | None = "0-0"
        own = True  # first, what this process read earlier and did not finish (a drain that raised)
        keepalive = Keepalive(lease, self.deliverer.gate)
        try:
            while True:
                entries: list[StreamEntry] = []
                if own:
                    entries = self._read(stream, "0")
                    own = bool(entries)
                    result.reclaimed += len(entries)
                    if entries:
                        metrics.entries_read_again.labels("own").inc(len(entries))
                if not entries and cursor is not None:
                    cursor, entries = self._reclaim(stream, cursor)
                    result.reclaimed += len(entries)
                if entries:
                    retries = schedule.due(self.deliverer.clock(), self.read_batch)
                else:  # new entries and the due retries, in one round trip
                    entries, retries = self._read_new(stream, schedule)
                if not entries and not retries:
                    break
                result.entries += len(entries)
                result.retries += len(retries)
                batch_deadline = time.monotonic() + self.budget_s  # the longest a batch waits for upload slots
                try:
                    tally = self.deliverer.deliver(
                        partition, entries, retries, keepalive=keepalive, deadline=batch_deadline, schedule=schedule
                    )
                except DrainStopped as exc:  # nothing more sent or committed: the entries stay pending
                    log.warning("drain_stopped", partition=partition, reason=str(exc), lease_held=lease.held)
                    result.more = lease.held  # no slot in time: try again soon; a lost lease: the new holder drains
                    break
                result.tally.add(tally)
                if not keepalive():
                    log.warning("lease_lost", partition=partition)
                    break
                if time.monotonic() >= deadline:
                    result.more = True
                    break
        finally:
            self.keeper.drop(lease)
            lease.release()
        return result

    def _reclaim(self, stream: str, cursor: str) -> tuple[str | None, list[StreamEntry]]:
        """Claim other consumers' pending entries: a dead consumer's at once, a live one's once idle for
        ``reclaim_idle_s`` (``XAUTOCLAIM``). A cursor of ``0-0`` starts over (the summary first)."""
        if cursor == "0-0":
            others = self._others(stream)
            if not others:
                return None, []
            living = alive(self.client, [self.keys.alive(name) for name in others])
            dead = [name for name, live in zip(others, living, strict=True) if not live]
            if dead:
                entries = self._claim_dead(stream, dead)
                if entries:
                    return "0-0", entries  # (a dead consumer may hold more than one batch: look again)
        try:
            answer: Any = self.client.xautoclaim(
                stream, GROUP, self.consumer, self.reclaim_idle_ms, start_id=cursor, count=self.read_batch
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(self.client, stream)
            return None, []
        next_cursor = text(answer[0])
        entries = [(entry_id, fields) for entry_id, fields in answer[1] if fields is not None]
        if entries:  # their consumer may have uploaded them before it died: they may reach CleverTap twice
            log.info("reclaimed", stream=stream, entries=len(entries))
            metrics.duplicates_suspected.labels("reclaimed").inc(len(entries))
            metrics.entries_read_again.labels("idle").inc(len(entries))
        return (None if next_cursor == "0-0" else next_cursor), entries

    def _others(self, stream: str) -> list[str]:
        """The other consumers that hold pending entries in ``stream`` (one ``XPENDING`` summary)."""
        try:
            summary: Any = self.client.xpending(stream, GROUP)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(self.client, stream)
            return []
        names = [text(item["name"]) for item in summary.get("consumers") or [] if int(item["pending"]) > 0]
        return [name for name in names if name != self.consumer]

    def _claim_dead(self, stream: str, dead: Sequence[str]) -> list[StreamEntry]:
        """Claim up to ``read_batch`` of the dead consumers' pending entries, oldest first, whatever their idle time;
        entries deleted from the stream meanwhile are acknowledged (nothing left to deliver)."""
        pipe = self.client.pipeline(transaction=False)
        for name in dead:
            pipe.xpending_range(stream, GROUP, min="-", max="+", count=self.read_batch, consumername=name)
        found: list[Any] = pipe.execute()
        ids = sorted({item["message_id"] for items in found for item in items}, key=id_order)[: self.read_batch]
        if not ids:
            return []
        answer: Any = self.client.xclaim(stream, GROUP, self.consumer, 0, ids)
        entries = [(entry_id, fields) for entry_id, fields in answer if fields]
        gone = set(ids) - {entry_id for entry_id, _ in entries}
        if gone:
            self.client.xack(stream, GROUP, *gone)
        if entries:  # the dead consumer may have uploaded them before it died: they may reach CleverTap twice
            log.info("reclaimed", stream=stream, entries=len(entries), consumers=len(dead), consumer="dead")
            metrics.duplicates_suspected.labels("reclaimed").inc(len(entries))
            metrics.entries_read_again.labels("dead").inc(len(entries))
        return entries

    def _read_new(self, stream: str, schedule: RetrySchedule) -> tuple[list[StreamEntry], list[RetryItem]]:
        """New entries (``>``) and the due retries, in one round trip (their fields as flat lists on a single Redis:
        :func:`~worker.store.streams.flat_pipeline`), and after them, on a single Redis, the suppressions' versions of
        the last batch's destinations, which the batch's deletion screen reads then (:meth:`Deliverer.prefetch`).

        After a read of less than half a batch (a partition fed live, not behind), the next read of the partition
        comes :attr:`read_pace_s` after it at the earliest (the drain waits outside the gate): a batch
        costs a fixed ~1 ms of CPU (its round trips, its request, cold caches) whatever its size, and a drain that
        read again as soon as it had delivered would go from one tiny batch to the next."""
        pace = self.read_pace_s
        last = self.short_reads.pop(stream, None) if pace > 0 else None
        if last is not None and (wait := last + pace - time.monotonic()) > 0:
            with self.deliverer.gate.outside(counted=False):  # at most 1 s: a lease renewed just now stays held
                time.sleep(wait)
        cluster = is_cluster(self.client)
        pipe = self.client.pipeline(transaction=False) if cluster else flat_pipeline(self.client)
        pipe.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=self.read_batch)
        schedule.queue_due(pipe, self.deliverer.clock(), self.read_batch)
        guess = () if cluster else self.deliverer.recent_write_keys  # the batch's destinations, most likely
        suppressions = self.deliverer.suppressions
        suppressions.queue_versions(pipe, guess)
        answer, due, *versions = pipe.execute(raise_on_error=False)
        if isinstance(due, Exception):
            raise due
        entries = self._entries(stream, answer, new=True)
        if pace > 0 and len(entries) < self.read_batch // 2:
            self.short_reads[stream] = time.monotonic()
        if entries and guess:
            self.deliverer.prefetch(entries, suppressions.versions(guess, versions))
        return entries, schedule.items(due)

    def _read(self, stream: str, start: str) -> list[StreamEntry]:
        """New entries (``>``), or this consumer's own pending ones (``0``)."""
        try:
            answer: Any = self.client.xreadgroup(GROUP, self.consumer, {stream: start}, count=self.read_batch)
        except redis.ResponseError as exc:
            answer = exc
        return self._entries(stream, answer)

    def _entries(self, stream: str, answer: Any, *, new: bool = False) -> list[StreamEntry]:
        """The entries of an ``XREADGROUP`` answer (a NOGROUP error, after a Redis restart lost the group: none,
        the group made again); pending entries whose entry was deleted are acknowledged. ``new``: a read of new
        entries (``>``), which never answers a deleted one: the answer's list is the batch, as it came."""
        if isinstance(answer, Exception):
            if not isinstance(answer, redis.ResponseError) or "NOGROUP" not in str(answer):
                raise answer
            ensure_group(self.client, stream)
            return []
        if not answer:
            return []
        if isinstance(answer, dict):  # RESP3, as Redis sends it: a map of streams
            answer = list(answer.items())
        if new:
            return answer[0][1]  # type: ignore[no-any-return]  # (entry id, fields) pairs, as lists
        gone = [entry_id for entry_id, fields in answer[0][1] if not fields]
        if gone:  # pending, but deleted from the stream: nothing left to deliver
            self.client.xack(stream, GROUP, *gone)
        return [(entry_id, fields) for entry_id, fields in answer[0][1] if fields]


class Keepalive(Folding):
    """A drain's keepalive (asked before every upload and commit): whether the partition's lease is still held.

    It renews the lease (one round trip), except when the lease was taken or renewed less than :data:`FRESH_S` ago
    and the drain has not waited since (for a slot, for CleverTap, :meth:`worker.delivery.gate.Gate.waits`): a lease
    renewed a moment ago with a TTL of seconds is held, and it can only be lost while its holder waits. So a batch
    asks Redis once, after its upload, instead of before and after each step."""

    def __init__(self, lease: Lease, gate: Gate) -> None:
        self.lease = lease
        self.gate = gate
        self.waits = gate.waits()

    def __call__(self) -> bool:
        waits = self.gate.waits()
        if self.lease.held and waits == self.waits and time.monotonic() - self.lease.renewed_at < FRESH_S:
            return True
        self.waits = waits
        return self.lease.renew()

    def fold(self) -> tuple[str, str, int] | None:
        """The lease as a commit checks and renews it in its own script (key, token, TTL ms), instead of a renewal
        of its own before it (:class:`worker.delivery.outcomes.HeldCommit`); None when it is known lost."""
        lease = self.lease
        return (lease.key, lease.token, lease.ttl_ms) if lease.held else None

    def folded(self, held: bool, asked: float) -> None:
        """What such a commit found, sent at ``asked`` (monotonic): the lease held and renewed then (as
        :meth:`__call__`'s renewal, which it stands for), or lost."""
        if held:
            self.lease.renewed_at = max(self.lease.renewed_at, asked)
            self.waits = self.gate.waits()
        else:
            self.lease.held = False


def partitions_with_work(
    client: redis.Redis,
    keys: Keys,
    partitions: int,
    *,
    reclaim_idle_s: float,
    now: float | None = None,
    skip: Collection[int] = (),
) -> list[int]:
    """Partitions that have unread entries, reclaimable pending entries or due retries, and no drain yet.

    Unread entries are counted as :class:`~worker.store.streams.PartitionBacklog` counts them (the stream's length
    less its pending entries, :func:`~worker.store.streams.queue_unread`), never from the group's lag, which is wrong
    after a Redis restart. ``skip``: partitions known to be drained now (this process's own drains), not looked at.

    Two round trips: which partitions have no lease and no queued drain (``EXISTS``), then the work of those alone,
    so that a busy relay, whose partitions are mostly held, reads little more than the first."""
    now = time.time() if now is None else now
    looked = [partition for partition in range(partitions) if partition not in skip]
    pipe = client.pipeline(transaction=False)
    for partition in looked:
        pipe.exists(keys.lease(partition), keys.dispatched(partition))
    taken: list[Any] = pipe.execute(raise_on_error=False)
    free = [partition for partition, held in zip(looked, taken, strict=True) if held == 0]
    if not free:
        return []
    pipe = client.pipeline(transaction=False)
    for partition in free:
        queue_unread(pipe, keys, partition)
        pipe.xpending_range(keys.stream(partition), GROUP, min="-", max="+", count=1, idle=int(reclaim_idle_s * 1000))
        pipe.zrangebyscore(keys.retry_due(partition), "-inf", now, start=0, num=1)
    results: list[Any] = pipe.execute(raise_on_error=False)
    busy: list[int] = []
    step = 2 + UNREAD_COMMANDS
    for number, partition in enumerate(free):
        answers = results[step * number : step * number + step]
        unread, pending, due = read_unread(answers[:-2]), answers[-2], answers[-1]
        if unread > 0 or (isinstance(pending, list) and pending) or (isinstance(due, list) and due):
            busy.append(partition)
    return busy


def dispatch(
    client: redis.Redis, keys: Keys, partitions: Sequence[int], send: Callable[[int], object], marker_ttl_s: float
) -> list[int]:
    """Queue a drain for each partition not already queued (``SET NX PX`` marker); returns those queued."""
    queued = []
    for partition in partitions:
        if client.set(keys.dispatched(partition), 1, nx=True, px=int(marker_ttl_s * 1000)):
            send(partition)
            queued.append(partition)
    return queued


class Ticker(threading.Thread):
    """Every ``interval_s``, queue drains for the partitions with work (a daemon thread in the worker)."""

    def __init__(self, interval_s: float, tick: Callable[[], object]) -> None:
        super().__init__(name="ctrelay-ticker", daemon=True)
        self.interval_s = interval_s
        self.tick = tick
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # Redis restarting, broker hiccup: try again next tick
                log.warning("tick_failed", error=f"{type(exc).__name__}: {exc}")
            self.stopped.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopped.set()
