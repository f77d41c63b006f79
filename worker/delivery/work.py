"""What a batch is made of while it is delivered: one :class:`Work` per message, and the :class:`Tally` of a batch.

Every room of delivery (uploads, outcomes, the deletion screen, the batch itself) shares these values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from worker.delivery.policy import Verdict
from worker.store.retries import RetryItem, item_id

NONE_DEDUPED: frozenset[int] = frozenset()
StreamEntry = tuple[bytes, dict[bytes, bytes] | list[bytes]]
"""One entry as ``XREADGROUP`` returns it: its id and its fields, as a dict (redis-py's form) or as Redis sends them,
a flat list of names and values (a new read's, :func:`worker.store.streams.flat_pipeline`)."""


class Folding(ABC):
    """A drain's keepalive whose lease a commit can check and renew itself, in its own script
    (:class:`worker.delivery.drain.Keepalive` derives from it). A base class, not a protocol: a batch is also
    delivered with a plain callable as its keepalive (or none), and
    :meth:`worker.delivery.outcomes.OutcomeWriter.held_commit` tells them apart by ``isinstance`` (~0.5 µs; a
    runtime-checkable protocol's check cost ~25 µs on Python 3.11, once per group)."""

    @abstractmethod
    def __call__(self) -> bool:
        """Whether the lease is still held (renewed when it is not known fresh)."""

    @abstractmethod
    def fold(self) -> tuple[str, str, int] | None:
        """The lease as the commit checks it: (key, token, TTL ms); None when it is known lost."""

    @abstractmethod
    def folded(self, held: bool, asked: float) -> None:
        """What such a commit found: the lease held (and renewed) or not; ``asked``: when it was sent (monotonic)."""


class Fold(Protocol):
    """Commands an upload sends with its slot's release, when CleverTap took the whole request
    (:meth:`worker.delivery.uploads.Uploader.send_plain`): the batch's commit."""

    def queue(self, pipe: Any) -> None:
        """Queue the commands on ``pipe`` (a plain pipeline)."""
        ...

    def read(self, answers: list[Any]) -> None:
        """Read their answers (the pipeline's, after the release's)."""
        ...


class Work:
    """One message being delivered: from the stream (``entry_id``) or from the retry schedule (``retry``).

    ``verdicts``: one per record, set as answers come (None: not sent); ``deduped``: indices of token records
    dropped as already sent (an immutable set, replaced when one is added: most messages share the empty one).
    ``message`` may be given as its JSON bytes (the stream entry's): it is then decoded when first asked for (a
    retry, a dead letter), so that a batch does not hold a decoded copy of every message while its upload waits for
    CleverTap; the decoded one, no longer needed once transformed, is freed at once, while it is still in the CPU's
    caches (freed after a wait of 200 ms it cost about four times as much).
    A plain class with slots: one is made per message, on the worker's hot path."""

    __slots__ = ("_message", "deduped", "entry_id", "records", "retry", "verdicts", "write_key")

    def __init__(
        self,
        write_key: str,
        message: dict[str, Any] | bytes,
        records: list[dict[str, Any]],
        entry_id: bytes | None = None,
        retry: RetryItem | None = None,
    ) -> None:
        self.write_key = write_key
        self._message = message
        self.records = records
        self.entry_id = entry_id
        self.retry = retry
        self.verdicts: list[Verdict | None] = [None] if len(records) == 1 else [None] * len(records)
        self.deduped: frozenset[int] = NONE_DEDUPED

    @property
    def message(self) -> dict[str, Any]:
        """The Segment message (decoded from its bytes on first use, then kept)."""
        message = self._message
        if message.__class__ is bytes:
            message = self._message = orjson.loads(message)
        assert isinstance(message, dict)
        return message

    def __repr__(self) -> str:
        return f"Work({self.write_key!r}, entry_id={self.entry_id!r}, records={len(self.records)})"

    @property
    def id(self) -> str:
        if self.retry is not None:
            return self.retry.id
        return item_id(self.write_key, self.message, (self.entry_id or b"").decode())


@dataclass
class Tally:
    """What one :meth:`Deliverer.deliver` did, in messages (uploads: requests sent)."""

    delivered: int = 0
    skipped: int = 0
    retried: int = 0
    deadlettered: int = 0
    uploads: int = 0

    def add(self, other: Tally) -> None:
        for name in ("delivered", "skipped", "retried", "deadlettered", "uploads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
