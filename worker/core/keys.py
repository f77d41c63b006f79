"""The queue's layout: every Redis key the relay owns, the stream envelope, and partitioning. Pure.

No other module spells a Redis key. Keys all start with a prefix (setting ``CTRELAY_REDIS_PREFIX``), so that
several relays, or several tests, can share one Redis.

**Hash tags** (the ``{...}`` part of a key decides its Redis Cluster slot; a single Redis ignores them). Keys that
one script or one MULTI touches together share a tag, since a cluster refuses a script or transaction across slots
(CROSSSLOT):

- a partition's keys share ``{p<n>}``: ``<prefix>:{p<n>}:stream``, ``:retry:due``, ``:retry:items``, ``:lease``,
  ``:dispatched``, and the dedup markers of the messages routed to that partition;
- an account's upload slots and cap share ``{a:<account>}``; the four dead-letter keys share ``{dlq}``;
- the suppressions of a write key are one hash (tag ``{s:<write key>}``); token markers, pause markers, consumers'
  liveness keys, the partition count and the housekeeping marker are single keys.

Work that spans tags (an outcome's dead letters and its stream acknowledgement, a replay's letters and streams) is
written in order by the module that owns it, never in one transaction. :class:`LegacyKeys` names the layout before
the tags, for ``ctrelay migrate`` (worker/store/migrate.py) alone.

Envelope: each accepted message is one stream entry with two fields,
``w`` = the write key (which names the destination) and ``m`` = the message as accepted, JSON,
with what ingest added (``messageId`` when missing, ``receivedAt``, merged batch context, corrected
``timestamp``). That is everything a dead letter needs to be replayed with today's settings.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

GROUP = "workers"
"""The one consumer group every worker reads the streams with."""

FIELD_WRITE_KEY = b"w"
FIELD_MESSAGE = b"m"


def partition_of(user_key: str, partitions: int) -> int:
    """The partition of a user: a stable hash (CRC-32) of ``userId or anonymousId``, modulo the count."""
    return zlib.crc32(user_key.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class Keys:
    """Names of the relay's Redis keys, under one prefix."""

    prefix: str = "ctrelay"

    def partition_tag(self, partition: int) -> str:
        """The common start of a partition's keys (its hash tag ``{p<n>}``)."""
        return f"{self.prefix}:{{p{partition}}}"

    def stream(self, partition: int) -> str:
        """The stream of one partition (entries: the envelope)."""
        return f"{self.prefix}:{{p{partition}}}:stream"

    def dedup(self, write_key: str, message_id: str) -> str:
        """The old layout's marker that ``message_id`` was accepted for ``write_key`` (a key per message, EX = the
        window); nothing writes it any more: :func:`worker.store.dedup.migrate` converts what is left of it."""
        return f"{self.prefix}:dedup:{write_key}:{message_id}"

    # Dedup markers (worker/store/dedup.py): under the partition's hash tag, as the messages they mark.
    def seen_sizes(self, partition: int) -> str:
        """Hash: time bucket → the number of marker sets (shards) the bucket of ``partition`` is split into."""
        return f"{self.prefix}:{{p{partition}}}:seen"

    def seen_stem(self, partition: int, bucket: int) -> str:
        """The common start of the marker sets of one bucket; a set's key is this stem and its shard number."""
        return f"{self.prefix}:{{p{partition}}}:seen:{bucket}:"

    def seen_pending(self, partition: int, member: str) -> str:
        """String (EX): the deletion with this marker member was queued, its suppression not yet confirmed written."""
        return f"{self.prefix}:{{p{partition}}}:seen:pending:{member}"

    def seen(self, partition: int, bucket: int, shard: int) -> str:
        """Set (intset): 64-bit digests of the messages accepted in ``bucket`` whose digest falls in ``shard``."""
        return f"{self.seen_stem(partition, bucket)}{shard}"

    # Dead letters (worker/store/deadletters.py): four keys, kept in step by Lua scripts (one tag: {dlq}).
    def deadletters(self) -> str:
        """Hash: letter id → the letter, JSON."""
        return f"{self.prefix}:{{dlq}}:letters"

    def deadletter_times(self) -> str:
        """Sorted set: letter id scored by its last failure (epoch s); time ranges, order, retention."""
        return f"{self.prefix}:{{dlq}}:times"

    def deadletter_reasons(self) -> str:
        """Hash: letter id → its reason (so that counts stay right when a letter is replaced or removed)."""
        return f"{self.prefix}:{{dlq}}:reasons"

    def deadletter_counts(self) -> str:
        """Hash: reason → number of letters (the ``ctrelay_deadletters{reason}`` gauge)."""
        return f"{self.prefix}:{{dlq}}:counts"

    def deadletter_keys(self) -> list[str]:
        """The four dead-letter keys: letters, times, reasons, counts (the order the scripts take them in)."""
        return [self.deadletters(), self.deadletter_times(), self.deadletter_reasons(), self.deadletter_counts()]

    def partitions(self) -> str:
        """String: the partition count the streams are laid out with (set on first use; worker/store/streams)."""
        return f"{self.prefix}:partitions"

    # Delivery (worker/delivery/; worker/store/retries.py, slots.py, lease.py).
    def lease(self, partition: int) -> str:
        """String: the token of the worker draining ``partition`` (PX = the lease TTL)."""
        return f"{self.prefix}:{{p{partition}}}:lease"

    def alive(self, consumer: str) -> str:
        """String: the group consumer ``consumer``'s process is alive (PX = the lease TTL, renewed by its keeper)."""
        return f"{self.prefix}:alive:{consumer}"

    def dispatched(self, partition: int) -> str:
        """String: a drain task for ``partition`` is queued (PX), so that ticks do not queue twice."""
        return f"{self.prefix}:{{p{partition}}}:dispatched"

    def retry_due(self, partition: int) -> str:
        """Sorted set: retry item id scored by its due time (epoch s)."""
        return f"{self.prefix}:{{p{partition}}}:retry:due"

    def retry_items(self, partition: int) -> str:
        """Hash: retry item id → the item, JSON (message, records still to send, attempts, failures)."""
        return f"{self.prefix}:{{p{partition}}}:retry:items"

    def slots(self, account_id: str) -> str:
        """Sorted set: upload slot token scored by its deadline (ms); the account's in-flight uploads."""
        return f"{self.prefix}:{{a:{account_id}}}:slots"

    def cap(self, account_id: str) -> str:
        """Hash: the account's adaptive concurrency cap (``cap``) and when it was last lowered (``lowered``)."""
        return f"{self.prefix}:{{a:{account_id}}}:cap"

    def paused(self, write_key: str) -> str:
        """String: the destination answered 401/403; its uploads wait until this expires (value: the status)."""
        return f"{self.prefix}:paused:{write_key}"

    def token_sent(self, write_key: str, object_id: str) -> str:
        """String: the push token last delivered for ``object_id`` (EX = the destination's token window)."""
        return f"{self.prefix}:token:{write_key}:{object_id}"

    # User deletion (worker/store/suppressions.py).
    def suppressed(self, write_key: str) -> str:
        """Hash: ``i:<identity>`` / ``g:<guid>`` of a deleted user → ``<until>|<at>|<via>`` (suppressed until then)."""
        return f"{self.prefix}:{{s:{write_key}}}:suppressed"

    def celery(self) -> str:
        """Prefix of the Celery broker's keys and name stem of its queue."""
        return f"{self.prefix}:celery"

    def housekeeping(self) -> str:
        """String (EX): a worker ran the periodic housekeeping (dead-letter retention) recently."""
        return f"{self.prefix}:housekeeping"


@dataclass(frozen=True, slots=True)
class LegacyKeys:
    """The layout before hash tags (releases up to this one), read only by ``ctrelay migrate``. Keys not listed
    here (partition count, token and pause markers, housekeeping, Celery's) are spelt the same in both layouts."""

    prefix: str = "ctrelay"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}:stream:{partition}"

    def retry_due(self, partition: int) -> str:
        return f"{self.prefix}:retry:due:{partition}"

    def retry_items(self, partition: int) -> str:
        return f"{self.prefix}:retry:items:{partition}"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:lease:{partition}"

    def alive(self, consumer: str) -> str:
        """String: the group consumer ``consumer``'s process is alive (PX = the lease TTL, renewed by its keeper)."""
        return f"{self.prefix}:alive:{consumer}"

    def dispatched(self, partition: int) -> str:
        return f"{self.prefix}:dispatched:{partition}"

    def deadletter_keys(self) -> list[str]:
        """letters, times, reasons, counts (the order of :meth:`Keys.deadletter_keys`)."""
        return [f"{self.prefix}:dlq:{name}" for name in ("letters", "times", "reasons", "counts")]

    def slots_pattern(self) -> str:
        """A SCAN pattern of every account's slots key; :meth:`account_of` reads the account back."""
        return f"{_glob(self.prefix)}:slots:*"

    def cap_pattern(self) -> str:
        return f"{_glob(self.prefix)}:cap:*"

    def suppressed_pattern(self) -> str:
        return f"{_glob(self.prefix)}:suppressed:*"

    def dedup_pattern(self) -> str:
        return f"{_glob(self.prefix)}:dedup:*"

    def name_in(self, key: str, kind: str) -> str:
        """The account id or write key in a legacy ``<prefix>:<kind>:<name>`` key."""
        return key[len(f"{self.prefix}:{kind}:") :]


def _glob(text: str) -> str:
    """``text`` with the SCAN pattern's special characters escaped."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One queued message: which destination it is for, and the message as accepted."""

    write_key: str
    message: dict[str, Any]

    def encode(self) -> dict[bytes, bytes]:
        """The stream entry's fields."""
        return {FIELD_WRITE_KEY: self.write_key.encode("utf-8"), FIELD_MESSAGE: orjson.dumps(self.message)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Envelope:
        """Read a stream entry back; raises KeyError / orjson.JSONDecodeError on a foreign entry."""
        return cls(*cls.read(fields))

    @staticmethod
    def read(fields: dict[bytes, bytes]) -> tuple[str, Any]:
        """:meth:`decode` without the object (the worker's hot path): the write key and the decoded message."""
        return fields[FIELD_WRITE_KEY].decode("utf-8"), orjson.loads(fields[FIELD_MESSAGE])
