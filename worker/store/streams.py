"""The partition streams as the consumers see them: the consumer group, what it says of itself, acknowledgement.

Every worker reads every stream with one consumer group (:data:`worker.core.keys.GROUP`). An entry is done with
once it is acknowledged *and* deleted (:func:`ack_and_delete`, always queued on the caller's MULTI together with
the outcome that makes it done), so a stream holds only work not yet done. :func:`group_info` is the one reader
of ``XINFO GROUPS`` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.core.keys import GROUP, Keys


def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the consumer group on ``stream`` (and the stream), reading from the start; nothing if it exists."""
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def ensure_groups(client: redis.Redis, keys: Keys, partitions: int) -> None:
    """Create the consumer group on every partition stream."""
    for partition in range(partitions):
        ensure_group(client, keys.stream(partition))


def ack_and_delete(pipe: Any, stream: str, entry_ids: Sequence[bytes]) -> None:
    """Queue, on the caller's pipeline, the XACK and XDEL of entries that are done with."""
    if entry_ids:
        pipe.xack(stream, GROUP, *entry_ids)
        pipe.xdel(stream, *entry_ids)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The relay's consumer group on one stream, as ``XINFO GROUPS`` tells it.

    ``exists`` is False when the stream or the group is not there yet (nothing read yet). ``lag`` is the number of
    entries not yet read, or None when Redis cannot tell (entries deleted out of order)."""

    exists: bool
    lag: int | None = None
    pending: int = 0
    consumers: int = 0


def group_info(groups: Any) -> GroupInfo:
    """The relay's group in an ``XINFO GROUPS`` answer (a list of dicts, or an error value: no stream yet)."""
    if not isinstance(groups, list):
        return GroupInfo(exists=False)
    for group in groups:
        info = {_text(key): value for key, value in group.items()}
        if _text(info.get("name")) == GROUP:
            lag = info.get("lag")
            return GroupInfo(
                exists=True,
                lag=int(lag) if lag is not None else None,
                pending=int(info.get("pending") or 0),
                consumers=int(info.get("consumers") or 0),
            )
    return GroupInfo(exists=False)


def prune_consumers(client: redis.Redis, keys: Keys, partitions: int, idle_s: float) -> int:
    """Forget group consumers that hold no pending entry and have been idle ``idle_s`` (restarted processes)."""
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.xinfo_consumers(keys.stream(partition), GROUP)
    answers: list[Any] = pipe.execute(raise_on_error=False)
    removed = 0
    for partition, consumers in enumerate(answers):
        if not isinstance(consumers, list):
            continue
        for consumer in consumers:
            if consumer.get("pending") == 0 and consumer.get("idle", 0) >= idle_s * 1000:
                # XGROUP DELCONSUMER drops only that consumer's pending entries: there are none
                removed += int(client.xgroup_delconsumer(keys.stream(partition), GROUP, consumer["name"]) == 0)
    return removed
