"""One drain at a time runs Python in a worker process; the others wait for CleverTap, for a slot, or for the gate.

A worker process runs up to ``CTRELAY_WORKER_CONCURRENCY`` (16) drain threads, so that 15 uploads are in flight
per account; but Python runs one thread at a time (the GIL), and runnable threads that take turns every 5 ms
(the interpreter's switch interval) cost CPU in the kernel's scheduler and in cold caches: measured, 16 threads
draining at once spent about a quarter more CPU per message than one. The :class:`Gate` turns that into turns
taken at natural points: a drain holds it while it works (reads, transforms, commits) and lets go of it
(:meth:`Gate.outside`) while it waits: for an upload slot, for CleverTap's answer, before a commit is tried again.
So the uploads of every drain are still in flight together, and the CPU work between them runs one drain after
the other, each to its next wait. Waits are all outside the gate (a drain never holds it while it sleeps), so a
slow request or a Redis blip in one drain never holds up the others longer than their own Redis calls take.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    """A lock over a process's drains (see the module); re-entrant per thread, and a no-op where not held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def waits(self) -> int:
        """How many waits (:meth:`outside`) this thread has begun: what a drain compares to know whether it waited
        since it last asked Redis something (:class:`worker.delivery.drain.Keepalive`)."""
        return int(getattr(self._local, "waits", 0))

    @contextmanager
    def inside(self) -> Iterator[None]:
        """Hold the gate for the block (a drain's whole run; nested holds by the same thread count once)."""
        depth = self._depth()
        if depth == 0:
            self._lock.acquire()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                self._lock.release()

    @contextmanager
    def outside(self) -> Iterator[None]:
        """Let go of the gate for the block (a wait), and take it back after; nothing when this thread does not
        hold it (a caller outside any drain: tests, the CLI)."""
        self._local.waits = self.waits() + 1
        depth = self._depth()
        if depth == 0:
            yield
            return
        self._local.depth = 0
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._local.depth = depth
