"""The cluster-wide, adaptive cap on concurrent uploads per CleverTap account, in Redis.

Every worker process on every machine takes a *slot* before an upload and gives it back after.
Slots are members of a sorted set scored by a deadline (Redis server time, ms): a slot held by a
worker that died expires at its deadline, so a crash never leaks capacity. Acquiring is one Lua
script (drop expired slots, compare the count with the cap, add), so two workers never both take
the last slot.

The deadline is short (:data:`SLOT_TTL_S`, 5 s) and, while a request runs, the process's keeper thread
(:class:`~worker.store.lease.LeaseKeeper`) pushes it back every third of it: a SIGKILLed or OOM-killed
holder's slots free within 5 s, however long requests take. The keeper renews a slot only for as long as
one request can need (``max_hold_s``: the client's longest request plus a margin), so a stuck thread in a
live process loses its slot too. Giving a slot back is best effort: when Redis does not answer, the slot
expires by itself within the TTL (the upload's answer is still logged, counted and committed). On a single Redis the
holder may send commands of its own with the release, in its round trip (the batch's commit after an upload that
CleverTap took whole: :class:`HeldSlot`), and the acquire script may read a destination's pause marker first
(:meth:`AccountSlots.try_acquire`: no slot taken for a paused destination). The scripts run when Redis is full
(:mod:`worker.store.scripts`: a few bytes each), since delivering is what frees memory then.

The cap starts at the configured maximum (15, CleverTap's documented limit). A 429 lowers it to
¾ of its value (at most once per second, so one burst of 429s counts once; never below 1); each
successful upload raises it by 1/cap (about +1 per cap successes), back up to the maximum.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import structlog

from worker.core.errors import DrainStopped
from worker.core.keys import Keys
from worker.store.connections import is_cluster
from worker.store.lease import LeaseKeeper
from worker.store.scripts import OomScript

log = structlog.get_logger("ctrelay.slots")
SLOT_TTL_S = 5.0
"""How long a slot outlives its holder's last renewal (renewed every third of it while a request runs)."""

# KEYS: slots, cap. ARGV: token, ttl ms, max cap. Returns 0, or {1, 1 when the cap is at its maximum else 0}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(redis.call('HGET', KEYS[2], 'cap') or ARGV[3])
cap = math.max(1, math.min(cap, tonumber(ARGV[3])))
if redis.call('ZCARD', KEYS[1]) < math.floor(cap) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  if cap >= tonumber(ARGV[3]) then return {1, 1} end
  return {1, 0}
end
return 0
"""

# KEYS: slots, cap, the destination's pause marker. ARGV: as _ACQUIRE. {-1, status} when the destination is paused
# (no slot taken), else as _ACQUIRE.
_ACQUIRE_UNPAUSED = (
    """
local paused = redis.call('GET', KEYS[3])
if paused then return {-1, paused} end
"""
    + _ACQUIRE
)

# KEYS: slots. ARGV: token, ttl ms. Returns 1 when the slot was still held (its deadline is pushed back).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline and tonumber(deadline) > now then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""

# KEYS: cap. ARGV: throttled (1/0), max cap. Returns the new cap as a string.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[2])
local cap = tonumber(redis.call('HGET', KEYS[1], 'cap') or max)
cap = math.max(1, math.min(cap, max))
if ARGV[1] == '1' then
  local lowered = tonumber(redis.call('HGET', KEYS[1], 'lowered') or 0)
  if now - lowered >= 1000 then
    cap = math.max(1, math.floor(cap * 0.75))
    redis.call('HSET', KEYS[1], 'lowered', now)
  end
elseif cap < max then
  cap = math.min(max, cap + 1 / cap)
else
  return tostring(cap)
end
redis.call('HSET', KEYS[1], 'cap', tostring(cap))
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(cap)
"""


class Paused(Exception):
    """The destination is paused (a 401/403 earlier: its marker holds the status): no slot was taken."""

    def __init__(self, status: int) -> None:
        super().__init__(f"destination paused after HTTP {status}")
        self.status = status


class HeldSlot:
    """One slot this process holds, as the keeper renews it.

    ``then``: commands the holder queues to go with the slot's release, in its round trip (a single Redis; on a
    Redis Cluster the release goes alone and ``then`` is not run); ``answers``: theirs, once sent (None: not sent,
    or Redis did not answer)."""

    def __init__(self, slots: AccountSlots, account_id: str, token: str) -> None:
        self.slots = slots
        self.key = slots.keys.slots(account_id)
        self.token = token
        self.then: Callable[[Any], object] | None = None
        self.answers: list[Any] | None = None

    def renew(self) -> bool:
        return int(self.slots._renew(keys=[self.key], args=[self.token, self.slots.slot_ttl_ms])) == 1


class AccountSlots:
    """Upload slots per CleverTap account, shared by every worker through Redis.

    ``max_hold_s``: the longest a slot taken with :meth:`slot` is renewed (None: as long as the block runs)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        max_cap: int = 15,
        slot_ttl_s: float = SLOT_TTL_S,
        max_hold_s: float | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.max_cap = max_cap
        self.slot_ttl_ms = max(1, int(slot_ttl_s * 1000))
        self.max_hold_s = max_hold_s
        self.keeper = LeaseKeeper(slot_ttl_s / 3, name="ctrelay-slots")
        self._acquire = OomScript(client, _ACQUIRE)
        self._acquire_unpaused = OomScript(client, _ACQUIRE_UNPAUSED)
        self._cluster = is_cluster(client)
        self._renew = OomScript(client, _RENEW)
        self._adjust = OomScript(client, _ADJUST)
        self._at_max: dict[str, bool] = {}  # per account: the cap was at its maximum when this process last took a slot

    def try_acquire(self, account_id: str, paused_key: str | None = None) -> str | None:
        """Take a slot now if one is free; returns its token, or None. With ``paused_key`` (a destination's pause
        marker), raises :class:`Paused` instead when the marker is set: on a single Redis in the same script (one
        round trip), on a Redis Cluster (another hash tag) by a ``GET`` before it."""
        token = uuid.uuid4().hex
        keys = [self.keys.slots(account_id), self.keys.cap(account_id)]
        args = [token, self.slot_ttl_ms, self.max_cap]
        if paused_key is None:
            taken = self._acquire(keys=keys, args=args)
        elif self._cluster:
            paused = self.client.get(paused_key)
            if paused is not None:
                raise Paused(int(paused))
            taken = self._acquire(keys=keys, args=args)
        else:
            taken = self._acquire_unpaused(keys=[*keys, paused_key], args=args)
        if not isinstance(taken, list):
            return None
        if int(taken[0]) == -1:
            raise Paused(int(taken[1]))
        self._at_max[account_id] = int(taken[1]) == 1
        return token

    def acquire(
        self,
        account_id: str,
        *,
        timeout_s: float | None = None,
        keepalive: Callable[[], object] | None = None,
        keepalive_every_s: float = 1.0,
        paused_key: str | None = None,
    ) -> str | None:
        """Wait for a slot (polling, 5-50 ms with jitter); None if ``timeout_s`` passes first.

        ``keepalive`` is called about every ``keepalive_every_s`` while waiting (the drain renews its lease);
        when it answers ``False`` (the lease is lost) the wait ends at once: None. ``paused_key``: see
        :meth:`try_acquire` (asked at every try).
        """
        started = last_keepalive = time.monotonic()
        wait = 0.005
        while True:
            token = self.try_acquire(account_id, paused_key)
            if token is not None:
                return token
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                return None
            if keepalive is not None and now - last_keepalive >= keepalive_every_s:
                if keepalive() is False:
                    return None
                last_keepalive = now
            time.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, 0.05)

    def release(self, account_id: str, token: str) -> None:
        self.client.zrem(self.keys.slots(account_id), token)

    def renew(self, account_id: str, token: str) -> bool:
        """Push the slot's deadline back by the TTL; False when it is no longer held (expired)."""
        return HeldSlot(self, account_id, token).renew()

    @contextmanager
    def slot(
        self,
        account_id: str,
        *,
        keepalive: Callable[[], object] | None = None,
        timeout_s: float | None = None,
        paused_key: str | None = None,
    ) -> Iterator[HeldSlot]:
        """Hold a slot for the duration of the block (waits up to ``timeout_s``, default as long as it takes),
        renewed by the keeper (up to ``max_hold_s``); given back after it, best effort (see the module), with the
        commands the block set as the slot's ``then`` (:class:`HeldSlot`) in the same round trip on a single Redis.

        Raises :class:`~worker.core.errors.DrainStopped` when no slot came in time or ``keepalive`` answered ``False``,
        :class:`Paused` when ``paused_key`` is set (:meth:`try_acquire`).
        """
        token = self.acquire(account_id, timeout_s=timeout_s, keepalive=keepalive, paused_key=paused_key)
        if token is None:
            raise DrainStopped(f"no upload slot for account {account_id} (waited up to {timeout_s} s, or lease lost)")
        held = HeldSlot(self, account_id, token)
        until = None if self.max_hold_s is None else time.monotonic() + self.max_hold_s
        self.keeper.hold(held, until)
        try:
            yield held
        finally:
            self.keeper.drop(held)
            try:
                if held.then is not None and not is_cluster(self.client):
                    with self.client.pipeline(transaction=False) as pipe:
                        pipe.zrem(held.key, token)
                        held.then(pipe)
                        held.answers = pipe.execute(raise_on_error=False)[1:]
                else:
                    self.release(account_id, token)
            except redis.RedisError as exc:  # it expires within the TTL; what the block did stands
                log.warning("slot_release_failed", account=account_id, error=f"{type(exc).__name__}: {exc}")

    def record(self, account_id: str, *, throttled: bool) -> float:
        """Adapt the cap after an upload: lower it on a 429, raise it slowly otherwise. Returns the new cap.

        A success when the cap was at its maximum as this process took its last slot changes nothing: no round
        trip (were the cap lowered since, by another worker's 429, the successes that take slots raise it again)."""
        if not throttled and self._at_max.get(account_id):
            return float(self.max_cap)
        cap = self._adjust(keys=[self.keys.cap(account_id)], args=["1" if throttled else "0", self.max_cap])
        return float(cap)

    def cap(self, account_id: str) -> float:
        raw = self.client.hget(self.keys.cap(account_id), "cap")
        return float(raw) if raw is not None else float(self.max_cap)

    def in_flight(self, account_id: str) -> int:
        """Slots held now (expired ones not counted)."""
        now_ms = int(time.time() * 1000)
        return int(self.client.zcount(self.keys.slots(account_id), now_ms, "+inf"))
