"""What the sandbox remembers: the records it accepted, the deletions it received, and its counters.

Records are kept in memory compactly: one orjson chunk per accepted upload (one allocation per
upload instead of one per record: ten times cheaper, and about the JSON size in memory), with its
account and the sequence number of its first record. Sequence numbers never change
(``GET /_sandbox/records?since=N`` pages by them). A deletion hides the user's earlier records of
that account (they no longer show) but keeps their sequence numbers, so a record the same user
uploads later still shows: that is how a test sees "nothing uploaded after the deletion".
``max_stored`` bounds memory: past it, records are still counted but not kept.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson


class Stats:
    """The counters ``GET /_sandbox/stats`` shows."""

    def __init__(self) -> None:
        self.requests = 0
        self.uploads = 0
        self.deletes = 0
        self.lookups = 0
        self.records = 0
        self.records_unprocessed = 0
        self.too_many_concurrent = 0
        self.timeouts = 0
        self.abandoned = 0
        self.dropped = 0
        self.oversize_keys = 0
        self.oversize_values = 0
        self.status: Counter[int] = Counter()
        self.codes: Counter[int] = Counter()
        self.records_by_account: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.max_attempted: Counter[str] = Counter()
        self.in_flight_total = 0
        self.max_in_flight_total = 0
        self.served = 0
        self.served_seconds = 0.0

    def enter(self, account: str) -> None:
        """One more request in flight for ``account`` (the caller checked the cap)."""
        now = self.in_flight[account] + 1
        self.in_flight[account] = now
        self.max_in_flight[account] = max(self.max_in_flight[account], now)
        self.max_attempted[account] = max(self.max_attempted[account], now)
        self.in_flight_total += 1
        self.max_in_flight_total = max(self.max_in_flight_total, self.in_flight_total)

    def refuse(self, account: str) -> None:
        """A request of ``account`` over the cap (answered 429): it would have been one more in flight."""
        self.too_many_concurrent += 1
        attempted = self.in_flight[account] + 1
        self.max_attempted[account] = max(self.max_attempted[account], attempted)

    def leave(self, account: str, seconds: float) -> None:
        """A request of ``account`` answered after ``seconds`` in flight."""
        self.in_flight[account] -= 1
        self.in_flight_total -= 1
        self.served += 1
        self.served_seconds += seconds

    def fresh(self) -> Stats:
        """New zeroed counters that carry over the requests in flight right now."""
        stats = Stats()
        stats.in_flight = self.in_flight
        stats.in_flight_total = self.in_flight_total
        return stats

    def describe(self, stored: int, not_stored: int, deletions: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "uploads": self.uploads,
            "deletes": self.deletes,
            "lookups": self.lookups,
            "records": self.records,
            "records_unprocessed": self.records_unprocessed,
            "records_stored": stored,
            "records_not_stored": not_stored,
            "records_by_account": dict(self.records_by_account),
            "unprocessed_codes": {str(code): n for code, n in sorted(self.codes.items())},
            "status_counts": {str(status): n for status, n in sorted(self.status.items())},
            "too_many_concurrent": self.too_many_concurrent,
            "rejected_429": self.status[429],
            "timeouts": self.timeouts,
            "abandoned": self.abandoned,
            "dropped_connections": self.dropped,
            "oversize_keys": self.oversize_keys,
            "oversize_values": self.oversize_values,
            "in_flight": self.in_flight_total,
            "in_flight_by_account": {k: v for k, v in self.in_flight.items() if v},
            "max_concurrency": self.max_in_flight_total,
            "mean_in_flight_ms": round(self.served_seconds / self.served * 1000, 1) if self.served else None,
            "max_concurrency_by_account": dict(self.max_in_flight),
            "max_attempted_concurrency_by_account": dict(self.max_attempted),
            "deletions": deletions,
        }


class RecordStore:
    """Accepted records (oldest first) and received deletions."""

    def __init__(self, max_stored: int = 5_000_000) -> None:
        self.max_stored = max_stored
        self._starts: list[int] = []  # sequence number of each chunk's first record
        self._owners: list[str] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._hidden: set[int] = set()
        self.not_stored = 0
        self.deletions: list[dict[str, Any]] = []

    def __len__(self) -> int:
        """Records stored and still shown (deleted users' records excluded)."""
        return self._size - len(self._hidden)

    def add(self, account: str, records: list[dict[str, Any]], upload: bytes | None = None) -> None:
        """Keep ``records`` (accepted for ``account``) as one chunk, as far as ``max_stored`` allows.

        ``upload``, when given, is the request body ``{"d": records}`` as received: kept as it is,
        which saves serialising the records again (the common case: every record accepted).
        """
        room = max(self.max_stored - self._size, 0)
        if room < len(records):
            self.not_stored += len(records) - room
            records, upload = records[:room], None
        if not records:
            return
        self._starts.append(self._size)
        self._owners.append(account)
        self._chunks.append(upload if upload is not None else orjson.dumps(records))
        self._size += len(records)

    def clear(self) -> None:
        for kept in (self._starts, self._owners, self._chunks, self.deletions):
            kept.clear()
        self._hidden.clear()
        self._size = self.not_stored = 0

    def _walk(self, account: str | None, since: int) -> Iterator[tuple[int, str, Any]]:
        """(sequence number, account, record) of the shown records from ``since`` on, oldest first."""
        first = max(bisect.bisect_right(self._starts, since) - 1, 0)
        hidden = self._hidden
        for index in range(first, len(self._chunks)):
            owner = self._owners[index]
            if account is not None and owner != account:
                continue
            start = self._starts[index]
            chunk = orjson.loads(self._chunks[index])
            for offset, record in enumerate(chunk["d"] if type(chunk) is dict else chunk):
                seq = start + offset
                if seq >= since and seq not in hidden:
                    yield seq, owner, record

    def render(self, account: str | None, since: int, limit: int | None) -> bytes:
        """``{"next": seq, "total": n, "records": [{"account_id", "record", "seq"}...]}`` as JSON bytes.

        ``next`` is where the next page starts (``?since=next``); ``total`` counts every record
        accepted so far (its sequence numbers are 0 .. total-1).
        """
        shown: list[dict[str, Any]] = []
        following = self._size
        for seq, owner, record in self._walk(account, max(since, 0)):
            if limit is not None and len(shown) >= limit:
                following = seq
                break
            shown.append({"account_id": owner, "record": record, "seq": seq})
        return orjson.dumps({"next": following, "total": self._size, "records": shown})

    def profile(self, account: str, key: str, value: str) -> dict[str, Any] | None:
        """The profile of the user whose records of ``account`` carry ``key`` (``identity`` or ``objectId``) =
        ``value``: the ids and the ``profileData`` of its profile records merged, oldest first; None if none."""
        found: dict[str, Any] | None = None
        for _, _, record in self._walk(account, 0):
            if type(record) is not dict or str(record.get(key)) != value:
                continue
            if found is None:
                found = {"identity": None, "objectId": None, "profileData": {}}
            for name in ("identity", "objectId"):
                if record.get(name) is not None:
                    found[name] = record[name]
            if record.get("type") == "profile" and type(record.get("profileData")) is dict:
                found["profileData"].update(record["profileData"])
        return found

    def delete(self, account: str, identities: list[str], guids: list[str]) -> dict[str, Any]:
        """Record a deletion and hide that user's records of ``account`` accepted so far."""
        wanted_identities, wanted_guids = set(identities), set(guids)
        removed = 0
        for seq, _, record in list(self._walk(account, 0)):
            identity = record.get("identity")
            if (identity is not None and str(identity) in wanted_identities) or record.get("objectId") in wanted_guids:
                self._hidden.add(seq)
                removed += 1
        deletion = {
            "account_id": account,
            "identity": identities,
            "guid": guids,
            "seq": self._size,
            "removed": removed,
            "at": time.time(),
        }
        self.deletions.append(deletion)
        return deletion
