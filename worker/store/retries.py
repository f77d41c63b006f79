"""The retry schedule: records waiting for another attempt, per partition, out of the stream's way.

A message whose records failed transiently is acknowledged in the stream and kept here instead (in
the same MULTI), so that it never blocks the partition's other users. Per partition::

    {p<n>}:retry:due    zset   item id scored by its due time (epoch s)
    {p<n>}:retry:items  hash   item id → the item, JSON

An item keeps the message as accepted (for a dead letter), the records still to send (only the
failing ones), the attempt count and the first and last failure. Its id is derived from
(write key, messageId), so scheduling the same message twice keeps one item. The drain of the
partition is the pump: under its lease, it takes the due items with each batch it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.client import Pipeline

from worker.core.keys import Keys


def item_id(write_key: str, message: dict[str, Any], fallback: str) -> str:
    """A retry item's id: the write key and messageId (or ``fallback``, the stream entry id, without one)."""
    message_id = message.get("messageId")
    return f"{write_key}\n{message_id if isinstance(message_id, str) and message_id else fallback}"


@dataclass(frozen=True, slots=True)
class RetryItem:
    """One message waiting for a retry of some of its records."""

    id: str
    write_key: str
    message: dict[str, Any]
    records: list[dict[str, Any]]
    attempts: int
    first_failure: float
    last_failure: float
    reason: str = ""
    status: int | None = None
    code: int | None = None
    error: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "w": self.write_key,
                "m": self.message,
                "r": self.records,
                "attempts": self.attempts,
                "first": self.first_failure,
                "last": self.last_failure,
                "reason": self.reason,
                "status": self.status,
                "code": self.code,
                "error": self.error,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> RetryItem:
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            write_key=data["w"],
            message=data["m"],
            records=data["r"],
            attempts=int(data["attempts"]),
            first_failure=float(data["first"]),
            last_failure=float(data["last"]),
            reason=data.get("reason", ""),
            status=data.get("status"),
            code=data.get("code"),
            error=data.get("error", ""),
        )


class RetrySchedule:
    """The retry schedule of one partition."""

    def __init__(self, client: redis.Redis, keys: Keys, partition: int) -> None:
        self.client = client
        self.due_key = keys.retry_due(partition)
        self.items_key = keys.retry_items(partition)

    def due(self, now: float, limit: int) -> list[RetryItem]:
        """Up to ``limit`` items due at ``now``, earliest first. Callers hold the partition's lease."""
        ids: Sequence[bytes] = self.client.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        return self.items(ids)

    def queue_due(self, pipe: Any, now: float, limit: int) -> None:
        """Queue, on the caller's pipeline, the first step of :meth:`due` (its answer goes to :meth:`items`), so that
        a drain asks for the due retries in the round trip of its read."""
        pipe.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit)

    def items(self, ids: Sequence[bytes]) -> list[RetryItem]:
        """The items of ``ids`` (due ones, as :meth:`queue_due` found them), in order."""
        if not ids:
            return []
        raws: list[bytes | None] = self.client.hmget(self.items_key, list(ids))  # type: ignore[assignment]
        items = [RetryItem.decode(raw) for raw in raws if raw is not None]
        missing = [member for member, raw in zip(ids, raws, strict=True) if raw is None]
        if missing:  # an index entry without its item (cannot happen through put/remove): drop it
            self.client.zrem(self.due_key, *missing)
        return items

    def put(self, pipe: Pipeline, item: RetryItem, due: float) -> None:
        """Queue the (re)scheduling of ``item`` at ``due`` on the caller's MULTI pipeline."""
        pipe.hset(self.items_key, item.id, item.encode())
        pipe.zadd(self.due_key, {item.id: due})

    def remove(self, pipe: Pipeline, ids: Sequence[str]) -> None:
        """Queue the removal of the items ``ids`` on the caller's MULTI pipeline."""
        if ids:
            pipe.hdel(self.items_key, *ids)
            pipe.zrem(self.due_key, *ids)

    def size(self) -> int:
        return int(self.client.zcard(self.due_key))
