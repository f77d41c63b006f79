"""The deletion screen: a batch's work held against the suppressed users before anything is uploaded.

A deletion (a ``Delete User`` track, or one queued by ``ctrelay users delete`` / the admin API) travels as a
*deletion record* ``{"type": "delete", "identity": [...], "guid": [...]}`` through the same path as uploads
(CleverTap's delete call, account slots, retries, dead letters). :meth:`Screen.screen` runs on every batch:

- each deletion read from the stream suppresses its user again if the user is not suppressed any more (a
  replayed letter, an unsuppress before it ran; an active window is kept), so that the user's other messages of
  the same batch, before or after it, are dropped too;
- every message with a record whose ``identity`` or ``objectId`` is suppressed is dropped: its stream entry
  acknowledged, or its retry item removed, and counted as ``ctrelay_messages_skipped_total{reason="deleted_user"}``.
  Deletion records themselves are never dropped.

Suppressions and acknowledgements are one MULTI on a single Redis; on a cluster (the suppressions' hashes have tags
of their own) the suppressions are written first, then the partition's MULTI (:mod:`worker.store.ordered`). A crash
between the two leaves the users suppressed and the entries pending: the batch is screened again (the renewal
keeps an active window), so a repeat, never a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
import structlog

from worker.core.keys import Keys
from worker.delivery import metrics
from worker.delivery.work import Tally, Work
from worker.store.ordered import write_in_order
from worker.store.retries import RetrySchedule
from worker.store.streams import ack_and_delete
from worker.store.suppressions import Suppressions, fields_of
from worker.transform.deletions import operator_mark

log = structlog.get_logger("ctrelay.deletion")
SKIP_REASON = "deleted_user"


def is_deletion(work: Work) -> bool:
    """Whether ``work`` is a deletion (its one record is a deletion record)."""
    return bool(work.records) and work.records[0].get("type") == "delete"


class _RecordsByDestination(Mapping[str, list[dict[str, Any]]]):
    """The batch's records by write key, gathered only for the destinations asked for (the suppressions' view asks
    only for those with many suppressed ids): a batch costs one pass over its works for their write keys."""

    def __init__(self, works: list[Work], names: list[str] | None = None) -> None:
        self._works = works
        self._names = names if names is not None else list(dict.fromkeys(work.write_key for work in works))

    def __getitem__(self, write_key: str) -> list[dict[str, Any]]:
        return [record for work in self._works if work.write_key == write_key for record in work.records]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Screen:
    """Drops the work of suppressed users from a batch (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        suppressions: Suppressions,
        clock: Callable[[], float],
        name_of: Callable[[str], str],
    ) -> None:
        self.client = client
        self.keys = keys
        self.suppressions = suppressions
        self.clock = clock
        self.name_of = name_of

    def screen(
        self,
        partition: int,
        works: list[Work],
        tally: Tally,
        schedule: RetrySchedule,
        *,
        write_keys: list[str] | None = None,
        deletions: bool = True,
        versions: Mapping[str, tuple[Any, int]] | None = None,
    ) -> list[Work]:
        """Suppress the users of the batch's deletions; drop (acknowledge, unschedule, count) suppressed work.
        Returns ``works`` itself when nothing is dropped. ``write_keys``: those of ``works`` in order, when the
        caller knows them; ``deletions=False``: the caller knows that no work is a deletion (none to look for);
        ``versions``: the suppressions' versions read with the batch
        (:meth:`~worker.store.suppressions.Suppressions.view`)."""
        if not works:
            return works
        now = self.clock()
        new: dict[str, set[str]] = {}
        for work in works if deletions else ():
            if work.retry is None and is_deletion(work):  # read from the stream (a retry was seen when first read)
                new.setdefault(work.write_key, set()).update(fields_of(work.records[0]))
        view = self.suppressions.view(_RecordsByDestination(works, write_keys), versions)
        if not new and not any(view.values()):
            return works
        kept: list[Work] = []
        dropped: list[Work] = []
        for work in works:
            entries, fresh = view[work.write_key], new.get(work.write_key)
            if (entries or fresh) and not is_deletion(work) and _hit(work, entries, fresh, now):
                dropped.append(work)
            else:
                kept.append(work)
        if not new and not dropped:
            return works
        acks = [work.entry_id for work in dropped if work.entry_id is not None]
        retried = [work.retry.id for work in dropped if work.retry is not None]

        def suppress(pipe: Any) -> None:
            for work in works:
                if is_deletion(work) and work.retry is None:
                    self.suppressions.add(pipe, work.write_key, work.records[0], now, _via(work.message), renew=True)

        def drop(pipe: Any) -> None:
            ack_and_delete(pipe, self.keys.stream(partition), acks)
            schedule.remove(pipe, retried)

        write_in_order(self.client, (False, suppress), (True, drop))
        counts: dict[str, int] = {}
        for work in dropped:
            counts[work.write_key] = counts.get(work.write_key, 0) + 1
        for write_key, count in counts.items():
            metrics.messages_skipped.labels(self.name_of(write_key), SKIP_REASON).inc(count)
        tally.skipped += len(dropped)
        log.info("deleted_users_screened", partition=partition, deletions=len(new), dropped=len(dropped))
        return kept


def _hit(work: Work, entries: dict[str, float], fresh: set[str] | None, now: float) -> bool:
    """Whether a record of ``work`` has a suppressed identity or objectId."""
    for record in work.records:
        for name in fields_of(record):
            if fresh is not None and name in fresh:
                return True
            until = entries.get(name)
            if until is not None and until > now:
                return True
    return False


def _via(message: Mapping[str, Any]) -> str:
    """How a deletion came in: ``cli`` / ``admin`` (queued by :mod:`worker.ops.users`), else ``track``."""
    return operator_mark(message) or "track"
