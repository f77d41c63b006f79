"""The queue's layout: every Redis key the relay owns, the stream envelope, and partitioning. Pure.

No other module spells a Redis key. Keys all start with a prefix (setting ``CTRELAY_REDIS_PREFIX``), so that
several relays, or several tests, can share one Redis.

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

    def stream(self, partition: int) -> str:
        """The stream of one partition (entries: the envelope)."""
        return f"{self.prefix}:stream:{partition}"

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

    # Dead letters (worker/store/deadletters.py): four keys, kept in step by Lua scripts.
    def deadletters(self) -> str:
        """Hash: letter id → the letter, JSON."""
        return f"{self.prefix}:dlq:letters"

    def deadletter_times(self) -> str:
        """Sorted set: letter id scored by its last failure (epoch s); time ranges, order, retention."""
        return f"{self.prefix}:dlq:times"

    def deadletter_reasons(self) -> str:
        """Hash: letter id → its reason (so that counts stay right when a letter is replaced or removed)."""
        return f"{self.prefix}:dlq:reasons"

    def deadletter_counts(self) -> str:
        """Hash: reason → number of letters (the ``ctrelay_deadletters{reason}`` gauge)."""
        return f"{self.prefix}:dlq:counts"

    def partitions(self) -> str:
        """String: the partition count the streams are laid out with (set on first use; worker/store/streams)."""
        return f"{self.prefix}:partitions"

    # Delivery (worker/delivery/; worker/store/retries.py, slots.py, lease.py).
    def lease(self, partition: int) -> str:
        """String: the token of the worker draining ``partition`` (PX = the lease TTL)."""
        return f"{self.prefix}:lease:{partition}"

    def dispatched(self, partition: int) -> str:
        """String: a drain task for ``partition`` is queued (PX), so that ticks do not queue twice."""
        return f"{self.prefix}:dispatched:{partition}"

    def retry_due(self, partition: int) -> str:
        """Sorted set: retry item id scored by its due time (epoch s)."""
        return f"{self.prefix}:retry:due:{partition}"

    def retry_items(self, partition: int) -> str:
        """Hash: retry item id → the item, JSON (message, records still to send, attempts, failures)."""
        return f"{self.prefix}:retry:items:{partition}"

    def slots(self, account_id: str) -> str:
        """Sorted set: upload slot token scored by its deadline (ms); the account's in-flight uploads."""
        return f"{self.prefix}:slots:{account_id}"

    def cap(self, account_id: str) -> str:
        """Hash: the account's adaptive concurrency cap (``cap``) and when it was last lowered (``lowered``)."""
        return f"{self.prefix}:cap:{account_id}"

    def paused(self, write_key: str) -> str:
        """String: the destination answered 401/403; its uploads wait until this expires (value: the status)."""
        return f"{self.prefix}:paused:{write_key}"

    def token_sent(self, write_key: str, object_id: str) -> str:
        """String: the push token last delivered for ``object_id`` (EX = the destination's token window)."""
        return f"{self.prefix}:token:{write_key}:{object_id}"

    # User deletion (worker/store/suppressions.py).
    def suppressed(self, write_key: str) -> str:
        """Hash: ``i:<identity>`` / ``g:<guid>`` of a deleted user → ``<until>|<at>|<via>`` (suppressed until then)."""
        return f"{self.prefix}:suppressed:{write_key}"

    def celery(self) -> str:
        """Prefix of the Celery broker's keys and name stem of its queue."""
        return f"{self.prefix}:celery"

    def housekeeping(self) -> str:
        """String (EX): a worker ran the periodic housekeeping (dead-letter retention) recently."""
        return f"{self.prefix}:housekeeping"


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
        return cls(write_key=fields[FIELD_WRITE_KEY].decode("utf-8"), message=orjson.loads(fields[FIELD_MESSAGE]))
