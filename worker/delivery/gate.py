"""One drain at a time runs Python in a worker process; the others wait for CleverTap, for a slot, or for the gate.

A worker process runs up to ``CTRELAY_WORKER_CONCURRENCY`` (16) drain threads, so that 15 uploads are in flight
per account; but Python runs one thread at a time (the GIL), and runnable threads that take turns every 5 ms
(the interpreter's switch interval) cost CPU in the kernel's scheduler and in cold caches: measured, 16 threads
draining at once spent about a quarter more CPU per message than one. The :class:`Gate` turns that into turns
taken at natural points: a drain holds it while it works (reads, transforms, commits) and lets go of it
(:meth:`Gate.outside`) while it waits: for an upload slot, for CleverTap's answer, before a commit is tried again.
So the uploads of every drain are still in flight together, and the CPU work between them runs one drain after
the other, each to its next wait. A drain's own waits are all outside the gate; a holder held up longer (a Redis
call that redis-py retries through an outage) holds the others back for :data:`PATIENCE_S` at most: past it they go
on beside it, as they would without the gate. Measured (``bench_e2e.py`` against the same tree without the gate,
two workers at 0 ms): 61.3 → 37.3 µs of worker CPU per message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

PATIENCE_S = 0.5
"""The longest a drain waits for its turn: past it, it goes on beside the holder (a holder stuck in a Redis call that
retries through an outage must not hold the others' commits back: the window in which a killed worker's uploads
are sent again stays as short as without the gate)."""


class Gate:
    """A lock over a process's drains (see the module); re-entrant per thread, a no-op where not held, and patient
    for :data:`PATIENCE_S` at most."""

    def __init__(self, patience_s: float = PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._lock = threading.Lock()
        self._local = threading.local()

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def waits(self) -> int:
        """How many waits (:meth:`outside`) this thread has begun: what a drain compares to know whether it waited
        since it last asked Redis something (:class:`worker.delivery.drain.Keepalive`)."""
        return int(getattr(self._local, "waits", 0))

    def _take(self) -> None:
        self._local.owned = self._lock.acquire(timeout=self.patience_s)

    def _give(self) -> None:
        if getattr(self._local, "owned", False):
            self._local.owned = False
            self._lock.release()

    @contextmanager
    def inside(self) -> Iterator[None]:
        """Hold the gate for the block (a drain's whole run; nested holds by the same thread count once)."""
        depth = self._depth()
        if depth == 0:
            self._take()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                self._give()

    @contextmanager
    def outside(self, *, counted: bool = True) -> Iterator[None]:
        """Let go of the gate for the block (a wait), and take it back after; nothing when this thread does not
        hold it (a caller outside any drain: tests, the CLI). ``counted=False``: a pause of the drain's own, bounded
        well below a lease's TTL (the read's pacing, at most 1 s), not counted in :meth:`waits`."""
        if counted:
            self._local.waits = self.waits() + 1
        depth = self._depth()
        if depth == 0:
            yield
            return
        self._local.depth = 0
        self._give()
        try:
            yield
        finally:
            self._take()
            self._local.depth = depth
