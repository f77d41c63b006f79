"""Partition leases: at most one drain per partition at a time, cluster-wide, crash-safe.

A lease is a Redis string holding a random token with a TTL. It is taken with ``SET NX PX``,
renewed and released only by its holder (Lua compares the token), and expires by itself when the
holder dies, so another worker can take over the partition after ``lease_ttl_s``. While a drain works,
:class:`LeaseKeeper` renews its lease every third of the TTL, however long one request takes.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis
import structlog

log = structlog.get_logger("ctrelay.lease")

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

    @classmethod
    def acquire(cls, client: redis.Redis, key: str, ttl_s: float) -> Lease | None:
        """Take the lease if nobody holds it; None otherwise."""
        token = uuid.uuid4().hex
        ttl_ms = max(1, int(ttl_s * 1000))
        if client.set(key, token, nx=True, px=ttl_ms):
            return cls(client, key, token, ttl_ms)
        return None

    def renew(self) -> bool:
        """Extend the lease by its TTL; False (and :attr:`held` False) if it was lost (expired, taken over)."""
        if self.held:
            self.held = bool(int(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)))
        return self.held

    def release(self) -> None:
        if self.held:
            self.client.eval(_RELEASE, 1, self.key, self.token)
            self.held = False


class LeaseKeeper:
    """Renews the leases this process holds, every ``interval_s``, from one daemon thread.

    A drain's requests can outlast its lease's TTL (a slow CleverTap); the keeper keeps the lease while
    the process lives, and stops renewing when it dies, so the TTL stays short for a fast takeover.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():  # (a forked child starts its own)
                self._thread = threading.Thread(target=self._run, name="ctrelay-leases", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                try:
                    lease.renew()
                except (
                    Exception
                ) as exc:  # Redis unreachable: the lease may expire; the drain finds out on its next renew
                    log.warning("lease_renewal_failed", key=lease.key, error=f"{type(exc).__name__}: {exc}")
