"""The queue's layout: every Redis key the relay owns, the stream envelope, and partitioning.

Ingest (the producer) and the worker (the consumer) both import this module; no other module
spells a Redis key. Keys all start with a prefix (setting ``CTRELAY_REDIS_PREFIX``), so that
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
        """A marker that ``message_id`` was accepted for ``write_key`` (expires after the dedup window)."""
        return f"{self.prefix}:dedup:{write_key}:{message_id}"


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
