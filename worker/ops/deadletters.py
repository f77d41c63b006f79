"""Operations on the dead letters, shared by the CLI (``ctrelay dlq``) and the admin API (``/admin/deadletters``).

stats, preview (what today's transform makes of a letter), replay, purge, export and import.
The CLI and the API only parse arguments and print; everything they do is here.

Replay moves letters back into the partition streams as the producer writes them
(:meth:`worker.store.producer.Producer.entry`: the user's partition, the envelope encoding), in batches: each
batch is one atomic Redis script (:meth:`DeadLetterStore.requeue`) that removes each letter still in
the store and XADDs its entry. A letter therefore leaves the store only together with its XADD; a
replay killed at any instant loses nothing and sends nothing twice, and a second run continues with
what is left. Two replays (or a replay and a purge) at once never send a letter twice, and workers
writing letters meanwhile do not slow it down (no WATCH to lose).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.core.destinations import Destination
from worker.core.keys import Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import REASONS, Filter, Letter
from worker.store.producer import Producer

MAX_REPLAY_BATCH = 500


# -- stats ------------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counts of the matching letters, by reason and by (reason, code, event, destination)."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    groups: Counter[tuple[str, int | None, str, str]] = field(default_factory=Counter)
    oldest: float | None = None
    newest: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason.most_common()),
            "groups": [
                {"reason": r, "code": c, "event": e, "destination": d, "count": n}
                for (r, c, e, d), n in self.groups.most_common()
            ],
            "oldest": self.oldest,
            "newest": self.newest,
        }


def event_label(letter: Letter) -> str:
    """How stats name what a letter is: the track event's name, else ``(type)``."""
    return letter.event if letter.event is not None else f"({letter.type or '?'})"


def stats(store: DeadLetterStore, where: Filter) -> Stats:
    result = Stats()
    for letter in store.scan(where):
        result.total += 1
        result.by_reason[letter.reason] += 1
        result.groups[(letter.reason, letter.code, event_label(letter), letter.write_key)] += 1
        result.oldest = letter.last_failure if result.oldest is None else min(result.oldest, letter.last_failure)
        result.newest = letter.last_failure if result.newest is None else max(result.newest, letter.last_failure)
    return result


# -- show -------------------------------------------------------------------------------------------------------


def preview(letter: Letter, destinations: Mapping[str, Destination], now: float) -> dict[str, Any]:
    """What today's transform, with today's settings, makes of the letter's message (no passcode in it).

    ``{"outcome": "records" | "delete", "records": [...]}``, ``{"outcome": "skip" | "invalid", "reason": ...}``, or
    ``{"outcome": "no_destination", ...}`` when the write key is no longer configured.
    """
    from worker.transform.deletions import Delete
    from worker.transform.records import Invalid, Skip, transform

    destination = destinations.get(letter.write_key)
    if destination is None:
        return {"outcome": "no_destination", "reason": f"write key {letter.write_key!r} is not configured"}
    result = transform(letter.message, destination, now)
    if isinstance(result, Skip):
        return {"outcome": "skip", "reason": result.reason}
    if isinstance(result, Invalid):
        return {"outcome": "invalid", "reason": result.reason}
    if isinstance(result, Delete):
        return {"outcome": "delete", "records": [result.record()]}
    return {"outcome": "records", "records": result}


# -- replay -----------------------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a replay did: letters put back into the queue, and letters left in the store (with why)."""

    replayed: int = 0
    kept: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    previews: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"replayed": self.replayed, "kept": self.kept, "dry_run": self.dry_run}
        if self.dry_run:
            data["would_send"] = self.previews
        return data


Progress = Callable[[int, int], None]
"""Called with (letters done, letters selected) after each batch."""


def replay_producer(keys: Keys, partitions: int) -> Producer:
    """The producer replays write with. ``Producer.add`` sets no dedup marker, so the dedup window plays no part."""
    return Producer(keys, partitions, dedup_window=0)


def select_ids(store: DeadLetterStore, where: Filter) -> list[str]:
    """The ids of the matching letters, oldest first (a replay keeps each user's order)."""
    return [letter.id for letter in store.scan(where, newest_first=False)]


def replay(
    store: DeadLetterStore,
    producer: Producer,
    destinations: Mapping[str, Destination],
    where: Filter,
    *,
    rate: float | None = None,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> ReplayResult:
    """Put the matching letters back into the delivery queue, at most ``rate`` messages/s (None or 0: no cap).

    Letters whose write key is no longer configured stay in the store (``kept``). With ``dry_run``,
    nothing changes and ``previews`` says what the transform makes of each letter today.
    """
    ids = select_ids(store, where)
    result = ReplayResult(dry_run=dry_run)
    if dry_run:
        for offset in range(0, len(ids), 1000):
            for letter in store.get_many(ids[offset : offset + 1000]):
                today = preview(letter, destinations, now())
                result.previews.append({"id": letter.id, "destination": letter.write_key, **today})
                if letter.write_key not in destinations:
                    result.kept[letter.id] = "destination not configured"
        if progress:
            progress(len(ids), len(ids))
        return result
    batch = MAX_REPLAY_BATCH if not rate else max(1, min(MAX_REPLAY_BATCH, int(rate / 10) or 1))
    started, done = now(), 0
    for offset in range(0, len(ids), batch):
        chunk = ids[offset : offset + batch]
        if rate:
            wait = started + done / rate - now()
            if wait > 0:
                sleep(wait)
        result.replayed += _move(store, producer, destinations, chunk, result.kept)
        done += len(chunk)
        if progress:
            progress(done, len(ids))
    return result


def _move(
    store: DeadLetterStore,
    producer: Producer,
    destinations: Mapping[str, Destination],
    ids: list[str],
    kept: dict[str, str],
) -> int:
    """One batch: the letters still in the store go back to their partition streams (see :meth:`requeue`)."""
    moves = []
    for letter in store.get_many(ids):
        if letter.write_key in destinations:
            moves.append((letter.id, producer.entry(letter.write_key, _with_id(letter))))
        else:
            kept[letter.id] = "destination not configured"
    return len(store.requeue(moves))


def _with_id(letter: Letter) -> dict[str, Any]:
    """The letter's message; one that came without a messageId (an import) gets one, as ingest would give it."""
    if letter.message.get("messageId"):
        return letter.message
    return {**letter.message, "messageId": f"dlq-{letter.id}"}


# -- purge, export, import --------------------------------------------------------------------------------------


def purge(store: DeadLetterStore, where: Filter) -> int:
    """Delete the matching letters (with ``limit``: the oldest ones); returns how many were deleted."""
    ids = select_ids(store, where)
    return sum(store.delete(ids[i : i + 1000]) for i in range(0, len(ids), 1000))


def export(store: DeadLetterStore, where: Filter) -> Iterator[bytes]:
    """The matching letters as JSON lines (each ending in a newline), oldest first."""
    for letter in store.scan(where, newest_first=False):
        yield orjson.dumps(letter.to_dict()) + b"\n"


@dataclass
class ImportResult:
    imported: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "errors": self.errors}


def import_lines(store: DeadLetterStore, lines: Iterable[bytes | str]) -> ImportResult:
    """Add the letters of JSON lines (the export format); a bad line is reported by number and skipped."""
    result = ImportResult()
    letters: list[Letter] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            letter = Letter.from_dict(orjson.loads(line))
            if letter.reason not in REASONS:
                raise ValueError(f"reason {letter.reason!r}: expected one of {', '.join(REASONS)}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            result.errors.append(f"line {number}: {detail}")
            continue
        letters.append(letter)
    result.imported = store.put(letters)
    return result
