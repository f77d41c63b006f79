"""Partition leases: at most one drain per partition at a time, cluster-wide, crash-safe.

A lease is a Redis string holding a random token with a TTL. It is taken with ``SET NX PX``,
renewed and released only by its holder (Lua compares the token; the scripts run by ``EVALSHA``), and expires by
itself when the holder dies, so another worker can take over the partition after ``lease_ttl_s``. While a drain works,
:class:`LeaseKeeper` renews its lease every third of the TTL, however long one request takes.

**The TTL is short (5 s by default, as the upload slots' is):** it is what a SIGKILLed or OOM-killed worker's
partitions wait for (measured with a 30 s TTL: the chaos loop's long runs were exactly 30 s after a worker kill). A
live holder does not depend on it: its keeper renews every third of it whatever the drain is doing, and a drain that
finds its lease lost (Redis away for longer than the TTL, a frozen process) stops before its next upload or commit,
its entries left pending for the next holder. What a shorter TTL costs is that a Redis outage longer than it takes
the leases of the drains under way: a batch uploaded but not committed then reaches CleverTap twice.

:class:`Liveness` is a consumer's key in the same spirit (``<prefix>:alive:<consumer>``, renewed by the keeper,
expiring a TTL after its process died): the holder of a partition's lease claims at once the pending entries of
consumers whose key is gone (:mod:`worker.delivery.drain`), instead of waiting for them to be idle.

The keeper renews anything :class:`Renewable` (upload slots, :mod:`worker.store.slots`, use it too), optionally
only until a deadline: a holder that is stuck past what its work can need loses what it holds, as a dead one does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import redis
import structlog

from worker.store.scripts import eval_allow_oom

log = structlog.get_logger("ctrelay.lease")

# allow-oom: a drain must be able to start when Redis is full (noeviction), since delivering is what frees memory
_ACQUIRE = """
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A held lease on one key. Use :meth:`acquire`; renew while working; release when done."""

    def __init__(self, client: redis.Redis, key: str, token: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.held = True
        self.renewed_at = time.monotonic()
        """When it was last taken or renewed (monotonic): it is held for its TTL from then at least."""

    @classmethod
    def acquire(cls, client: redis.Redis, key: str, ttl_s: float) -> Lease | None:
        """Take the lease if nobody holds it; None otherwise."""
        token = uuid.uuid4().hex
        ttl_ms = max(1, int(ttl_s * 1000))
        if eval_allow_oom(client, _ACQUIRE, [key], [token, ttl_ms]):
            return cls(client, key, token, ttl_ms)
        return None

    def renew(self) -> bool:
        """Extend the lease by its TTL; False (and :attr:`held` False) if it was lost (expired, taken over)."""
        if self.held:
            asked = time.monotonic()
            self.held = bool(int(eval_allow_oom(self.client, _RENEW, [self.key], [self.token, self.ttl_ms])))
            if self.held:
                self.renewed_at = asked
        return self.held

    def release(self) -> None:
        if self.held:
            eval_allow_oom(self.client, _RELEASE, [self.key], [self.token])
            self.held = False


# allow-oom: a full Redis (noeviction) must not make a live consumer look dead
_ALIVE = """
return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
"""


class Liveness:
    """A consumer's liveness key: set, then renewed by a :class:`LeaseKeeper`, while its process lives; it expires
    ``ttl_s`` after the process died (SIGKILL, OOM kill, a lost machine) and is deleted on a warm shutdown."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))

    def renew(self) -> bool:
        """Set the key for another TTL; always held (a failure raises, and the keeper tries again next time)."""
        eval_allow_oom(self.client, _ALIVE, [self.key], [self.ttl_ms])
        return True

    def release(self) -> None:
        """Delete the key (a warm shutdown): what this consumer left pending can be claimed at once."""
        self.client.delete(self.key)


def alive(client: redis.Redis, keys: Sequence[str]) -> list[bool]:
    """Whether each liveness key exists (one pipelined round trip; one key per command, so a cluster is fine)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [bool(found) for found in pipe.execute()]


class Renewable(Protocol):
    """Something held in Redis under a TTL that its holder extends while it works (a lease, an upload slot)."""

    key: str

    def renew(self) -> bool:
        """Extend the TTL; False once it is no longer held (expired, taken over, released)."""
        ...


class LeaseKeeper:
    """Renews what this process holds (leases, upload slots), every ``interval_s``, from one daemon thread.

    A drain's requests can outlast its lease's TTL (a slow CleverTap); the keeper keeps the lease while
    the process lives, and stops renewing when it dies, so the TTL stays short for a fast takeover.
    A hold may end at a deadline (``until``, monotonic): past it the keeper stops renewing.
    """

    def __init__(self, interval_s: float, name: str = "ctrelay-leases") -> None:
        self.interval_s = interval_s
        self.name = name
        self._held: dict[Renewable, float | None] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, item: Renewable, until: float | None = None) -> None:
        with self._lock:
            self._held[item] = until
            if self._thread is None or not self._thread.is_alive():  # (a forked child starts its own)
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def drop(self, item: Renewable) -> None:
        with self._lock:
            self._held.pop(item, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            now = time.monotonic()
            with self._lock:
                items = list(self._held.items())
            for item, until in items:
                if until is not None and now >= until:  # held longer than its work can need: let it expire
                    log.warning("renewal_stopped", key=item.key, reason="held past its deadline")
                    self.drop(item)
                    continue
                try:
                    if not item.renew():
                        self.drop(item)
                except Exception as exc:  # Redis unreachable: it may expire; the holder finds out on its next renew
                    log.warning("lease_renewal_failed", key=item.key, error=f"{type(exc).__name__}: {exc}")
