"""What the sandbox remembers: the records it accepted, the deletions it received, and its counters.

Records are kept in memory compactly: two parallel lists, the account id (one shared string per
account) and the record as orjson bytes. A record's index in those lists is its sequence number,
which never changes (``GET /_sandbox/records?since=N`` pages by it). A deletion blanks the user's
earlier records of that account (they no longer show) but keeps their sequence numbers, so a record
the same user uploads later still shows: that is how a test sees "nothing uploaded after the
deletion". ``max_stored`` bounds memory: past it, records are still counted but not kept.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson


class Stats:
    """The counters ``GET /_sandbox/stats`` shows."""

    def __init__(self) -> None:
        self.requests = 0
        self.uploads = 0
        self.deletes = 0
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
        self.in_flight_total = 0
        self.max_in_flight_total = 0

    def enter(self, account: str) -> None:
        """One more request in flight for ``account`` (the caller checked the cap)."""
        now = self.in_flight[account] + 1
        self.in_flight[account] = now
        self.max_in_flight[account] = max(self.max_in_flight[account], now)
        self.in_flight_total += 1
        self.max_in_flight_total = max(self.max_in_flight_total, self.in_flight_total)

    def leave(self, account: str) -> None:
        self.in_flight[account] -= 1
        self.in_flight_total -= 1

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
            "max_concurrency_by_account": dict(self.max_in_flight),
            "deletions": deletions,
        }


class RecordStore:
    """Accepted records (oldest first) and received deletions."""

    def __init__(self, max_stored: int = 5_000_000) -> None:
        self.max_stored = max_stored
        self._accounts: list[str] = []
        self._records: list[bytes | None] = []
        self._interned: dict[str, str] = {}
        self.not_stored = 0
        self.deletions: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._records)

    def add(self, account: str, records: list[dict[str, Any]]) -> None:
        """Keep ``records`` (accepted for ``account``), as far as ``max_stored`` allows."""
        room = self.max_stored - len(self._records)
        if room < len(records):
            self.not_stored += len(records) - max(room, 0)
            records = records[: max(room, 0)]
        account = self._interned.setdefault(account, account)
        dumps = orjson.dumps
        self._accounts.extend([account] * len(records))
        self._records.extend([dumps(r) for r in records])

    def clear(self) -> None:
        self._accounts.clear()
        self._records.clear()
        self.not_stored = 0
        self.deletions.clear()

    def render(self, account: str | None, since: int, limit: int | None) -> bytes:
        """``{"records": [{"account_id", "record"}...], "next": seq, "total": n}`` as JSON bytes."""
        since = max(since, 0)
        end = len(self._records)
        parts: list[bytes] = []
        seq = since
        accounts, records = self._accounts, self._records
        quoted: dict[str, bytes] = {}
        while seq < end and (limit is None or len(parts) < limit):
            record, owner = records[seq], accounts[seq]
            seq += 1
            if record is None or (account is not None and owner != account):
                continue
            name = quoted.get(owner)
            if name is None:
                name = quoted[owner] = orjson.dumps(owner)
            parts.append(b'{"account_id":' + name + b',"record":' + record + b"}")
        head = b'{"next":' + str(seq).encode() + b',"total":' + str(end).encode()
        return head + b',"records":[' + b",".join(parts) + b"]}"

    def delete(self, account: str, identities: list[str], guids: list[str]) -> dict[str, Any]:
        """Record a deletion and blank that user's records of ``account`` accepted so far."""
        wanted_identities, wanted_guids = set(identities), set(guids)
        removed = 0
        for seq, owner in enumerate(self._accounts):
            raw = self._records[seq]
            if owner != account or raw is None:
                continue
            record = orjson.loads(raw)
            identity = record.get("identity")
            if (identity is not None and str(identity) in wanted_identities) or record.get("objectId") in wanted_guids:
                self._records[seq] = None
                removed += 1
        deletion = {
            "account_id": account,
            "identity": identities,
            "guid": guids,
            "seq": len(self._records),
            "removed": removed,
            "at": time.time(),
        }
        self.deletions.append(deletion)
        return deletion
