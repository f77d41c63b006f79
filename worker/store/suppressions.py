"""Suppressed users (user deletion), per destination, in Redis: a suppression as a value and its store.

One hash per destination (:meth:`worker.core.keys.Keys.suppressed`, a hash tag of its own)::

    i:<identity> | g:<guid>  →  "<until>|<at>|<via>"     (epoch seconds; via: track, cli, admin)
    v                        →  a version, raised (HINCRBY) by every change in the same transaction

A field is active while ``until`` is in the future (compared with the caller's clock, so expiry needs no
Redis TTL and is testable); expired fields are pruned when a deletion is added or the list is read. A reader
keeps a copy of each hash and re-reads it only when ``v`` moved (:meth:`Suppressions.view`); past
:data:`LARGE` ids a destination is not copied: each batch asks for its own ids with one ``HMGET``.

Every write of a suppression is one script on its hash (fields and version together), so that on a Redis Cluster
it needs no transaction with the caller's other writes (other tags: streams, token markers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from worker.core.keys import Keys
from worker.store.scripts import on_pipeline

if TYPE_CHECKING:
    from redis.client import Pipeline

VERSION_FIELD = "v"
"""A counter in each destination's hash, raised by every change, so that workers re-read the hash only then."""


def fields_of(record: Mapping[str, Any]) -> list[str]:
    """The suppression fields a record touches: ``i:<identity>``, ``g:<objectId>`` (a deletion: its lists)."""
    if record.get("type") == "delete":
        return [f"i:{v}" for v in record.get("identity") or ()] + [f"g:{v}" for v in record.get("guid") or ()]
    found = []
    identity, object_id = record.get("identity"), record.get("objectId")
    if identity is not None:
        found.append(f"i:{identity}")
    if object_id is not None:
        found.append(f"g:{object_id}")
    return found


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed identifier of one destination."""

    field: str
    until: float
    at: float
    via: str

    @property
    def kind(self) -> str:
        return "identity" if self.field.startswith("i:") else "guid"

    @property
    def value(self) -> str:
        return self.field[2:]

    def encode(self) -> str:
        return f"{self.until!r}|{self.at!r}|{self.via}"

    @classmethod
    def decode(cls, field: str, raw: bytes | str) -> Suppression:
        text = raw.decode() if isinstance(raw, bytes) else raw
        until, at, via = [*text.split("|", 2), "", ""][:3]
        return cls(field, float(until), float(at or 0), via)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.value, "until": self.until, "at": self.at, "via": self.via}


_RENEW_LUA = """
local now = tonumber(ARGV[1])
local changed = false
for i = 3, #ARGV do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(string.match(current, '^[^|]+')) <= now then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[2])
    changed = true
  end
end
if changed then redis.call('HINCRBY', KEYS[1], 'v', 1) end
return 1
"""
# As _RENEW_LUA, but every field is (re)written: a new deletion starts the window anew.
_SET_LUA = """
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return 1
"""
_UNKNOWN = object()
LARGE = 50_000
"""A destination with more suppressed ids than this is not copied: each batch asks for its own ids (``HMGET``)."""


class Suppressions:
    """The suppressed users of every destination, in Redis; screening keeps a per-process copy of each
    destination's hash, re-read (``HGETALL``) only when its version field has moved."""

    def __init__(self, client: redis.Redis, keys: Keys, window_s: float, clock: Callable[[], float]) -> None:
        self.client = client
        self.keys = keys
        self.window_s = window_s
        self.clock = clock
        self._renew = client.register_script(_RENEW_LUA)
        self._set = client.register_script(_SET_LUA)
        self._cache: dict[str, tuple[object, dict[str, float]]] = {}
        self.large = LARGE

    def add(
        self, pipe: Pipeline, write_key: str, record: Mapping[str, Any], now: float, via: str, *, renew: bool = False
    ) -> float:
        """Queue (on the caller's pipeline: a MULTI on a single Redis, a plain pipeline on a cluster, where the keys'
        tags differ) the suppression of a deletion record's ids, one script on the destination's hash; returns its
        end.

        A new deletion (ingest, the operator) starts the window anew; with ``renew`` (the worker reading a
        deletion), only ids not suppressed any more are suppressed: an active window is kept as it is. The
        push-token markers of the deleted guids go too (after it): a user who comes back registers their token
        again."""
        until = now + self.window_s
        fields = fields_of(record)
        if fields:
            key = self.keys.suppressed(write_key)
            value = Suppression("", until, now, via).encode()
            if renew:
                on_pipeline(self._renew, pipe, [key], [now, value, *fields])
            else:
                on_pipeline(self._set, pipe, [key], [value, *fields])
        for guid in record.get("guid") or ():
            pipe.delete(self.keys.token_sent(write_key, guid))
        return until

    def active(self, write_key: str, now: float) -> list[Suppression]:
        """The destination's active suppressions (expired ones are pruned on the way)."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.suppressed(write_key))  # type: ignore[assignment]
        raw.pop(VERSION_FIELD.encode(), None)
        found = [Suppression.decode(field.decode(), value) for field, value in raw.items()]
        expired = [s.field for s in found if s.until <= now]
        if expired:  # no version change: workers ignore expired entries anyway
            self.client.hdel(self.keys.suppressed(write_key), *expired)
        return sorted((s for s in found if s.until > now), key=lambda s: s.at)

    def lift(self, write_key: str, fields: Iterable[str]) -> int:
        """Lift the suppression of ``fields``; returns how many were suppressed (active or not)."""
        fields = list(fields)
        if not fields:
            return 0
        key = self.keys.suppressed(write_key)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(key, *fields)
            pipe.hincrby(key, VERSION_FIELD, 1)
            removed, _ = pipe.execute()
        return int(removed)

    def queue_versions(self, pipe: Any, write_keys: Iterable[str]) -> None:
        """Queue on ``pipe`` (plain) what :meth:`view` reads first of each destination: its version and size."""
        for write_key in write_keys:
            pipe.hget(self.keys.suppressed(write_key), VERSION_FIELD)
            pipe.hlen(self.keys.suppressed(write_key))

    @staticmethod
    def versions(write_keys: Sequence[str], answers: Sequence[Any]) -> dict[str, tuple[Any, int]]:
        """The (version, size) of each destination from the answers :meth:`queue_versions` queued; a destination
        whose answers are errors (``execute(raise_on_error=False)``) is left out (:meth:`view` asks again)."""
        found: dict[str, tuple[Any, int]] = {}
        for index, write_key in enumerate(write_keys):
            version, size = answers[2 * index], answers[2 * index + 1]
            if not isinstance(version, Exception) and isinstance(size, int):
                found[write_key] = (version, size)
        return found

    def view(
        self, records: Mapping[str, Iterable[Mapping[str, Any]]], versions: Mapping[str, tuple[Any, int]] | None = None
    ) -> dict[str, dict[str, float]]:
        """Per write key of ``records`` (a batch's records by destination), its suppressed fields → until.

        One round trip (``HGET`` of each version, ``HLEN``), none for the destinations whose ``versions`` the caller
        read already (:meth:`queue_versions`, after the batch's read, in its round trip); a destination's copy is
        re-read (``HGETALL``) only when its version moved; a destination with more than :attr:`large` ids is asked
        for the batch's ids."""
        names = list(records)
        known = versions if versions is not None else {}
        asked = [name for name in names if name not in known]
        if asked:
            with self.client.pipeline(transaction=False) as pipe:
                self.queue_versions(pipe, asked)
                answers: list[Any] = pipe.execute()
            known = {**known, **self.versions(asked, answers)}
        stale: list[str] = []
        large: dict[str, list[str]] = {}
        for name in names:
            version, size = known[name]
            if size > self.large:
                large[name] = sorted({field for record in records[name] for field in fields_of(record)})
            elif self._cached(name) != version:
                stale.append(name)
        found: dict[str, dict[str, float]] = {}
        if stale or large:
            with self.client.pipeline(transaction=False) as pipe:
                for write_key in stale:
                    pipe.hgetall(self.keys.suppressed(write_key))
                for write_key, fields in large.items():
                    pipe.hmget(self.keys.suppressed(write_key), fields)
                replies: list[Any] = pipe.execute()
            for write_key, raw in zip(stale, replies[: len(stale)], strict=True):
                version = raw.pop(VERSION_FIELD.encode(), None)  # the snapshot's own version: consistent with it
                entries = {field.decode(): float(value.partition(b"|")[0]) for field, value in raw.items()}
                self._cache[write_key] = (version, entries)
            for (write_key, fields), values in zip(large.items(), replies[len(stale) :], strict=True):
                found[write_key] = {
                    field: float(value.partition(b"|")[0])
                    for field, value in zip(fields, values, strict=True)
                    if value is not None
                }
        return {name: found[name] if name in large else self._cache[name][1] for name in names}

    def _cached(self, write_key: str) -> object:
        cached = self._cache.get(write_key)
        return _UNKNOWN if cached is None else cached[0]
