"""What a batch is made of while it is delivered: one :class:`Work` per message, and the :class:`Tally` of a batch.

Every room of delivery (uploads, outcomes, the deletion screen, the batch itself) shares these values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.delivery.policy import Verdict
from worker.store.retries import RetryItem, item_id

StreamEntry = tuple[bytes, dict[bytes, bytes]]
"""One entry as ``XREADGROUP`` returns it: its id and its fields."""


@dataclass
class Work:
    """One message being delivered: from the stream (``entry_id``) or from the retry schedule (``retry``)."""

    write_key: str
    message: dict[str, Any]
    records: list[dict[str, Any]]
    entry_id: bytes | None = None
    retry: RetryItem | None = None
    verdicts: list[Verdict | None] = field(default_factory=list)
    deduped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.verdicts = [None] * len(self.records)

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
