"""Delivering one batch: stream entries and due retries in, outcomes written and acknowledged out.

:meth:`Deliverer.deliver` decodes each entry (a foreign or broken one becomes an ``invalid_message``
dead letter), transforms it (pure), drops push-token records already sent for that objectId within
the destination's window, groups the records by destination, uploads them (≤ 1000 event/profile and
≤ 100 token records per request, each request holding an account slot), classifies the answer per
record (:mod:`worker.policy`), halves a request that CleverTap rejects as a whole until the culprits
are alone, and then, per destination, writes every message's outcome in **one MULTI**: dead letters,
retry-schedule items, token markers, and the XACK of the entries. An entry is acknowledged only in
the transaction that makes its outcome durable; a crash before it leaves the entry pending, to be
reclaimed (at-least-once: duplicates only after a crash between an upload and its commit).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from worker import metrics
from worker.clevertap import MAX_RECORDS, MAX_TOKENS, CleverTap, Report
from worker.concurrency import AccountSlots
from worker.deadletters import DeadLetterStore, Letter
from worker.destinations import Destination
from worker.policy import DELIVERED, SPLIT, DeadLetter, Delivered, RetryPolicy, Verdict, classify, decide
from worker.queue import GROUP, Envelope, Keys
from worker.retries import RetryItem, RetrySchedule, item_id
from worker.transform import Invalid, Skip, TransformStats, transform

log = structlog.get_logger("ctrelay.delivery")
StreamEntry = tuple[bytes, dict[bytes, bytes]]


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


Slice = list[tuple[Work, int]]


def chunks(items: Slice) -> Iterator[Slice]:
    """Cut (work, record index) pairs, in order, into requests of ≤ 1000 event/profile and ≤ 100 token records."""
    chunk: Slice = []
    records = tokens = 0
    for work, index in items:
        token = work.records[index].get("type") == "token"
        if (token and tokens >= MAX_TOKENS) or (not token and records >= MAX_RECORDS):
            yield chunk
            chunk, records, tokens = [], 0, 0
        chunk.append((work, index))
        tokens += token
        records += not token
    if chunk:
        yield chunk


class Deliverer:
    """Everything a batch needs: Redis, the destinations, the HTTP seam, the slots, the dead letters, the policy."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        destinations: Mapping[str, Destination],
        *,
        clevertap: CleverTap,
        slots: AccountSlots,
        deadletters: DeadLetterStore,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.destinations = destinations
        self.clevertap = clevertap
        self.slots = slots
        self.deadletters = deadletters
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()

    def deliver(
        self,
        partition: int,
        entries: Sequence[StreamEntry],
        retries: Sequence[RetryItem] = (),
        keepalive: Callable[[], object] | None = None,
    ) -> Tally:
        """Deliver ``entries`` (read from ``partition``) and due ``retries``; write and ack every outcome."""
        tally = Tally()
        works = self._prepare(partition, entries, tally)
        works += [Work(item.write_key, item.message, list(item.records), retry=item) for item in retries]
        self._drop_sent_tokens(works)
        groups: dict[str, list[Work]] = {}
        for work in works:
            groups.setdefault(work.write_key, []).append(work)
        schedule = RetrySchedule(self.client, self.keys, partition)
        for write_key, group in groups.items():
            destination = self.destinations.get(write_key)
            if destination is None:  # a retry item whose destination was removed from the configuration
                self._commit_letters(partition, group, "invalid_message", f"unknown write key {write_key!r}", tally)
                continue
            tally.uploads += self._send(destination, group, keepalive)
            self._commit(partition, schedule, destination, group, tally)
        return tally

    # -- before any upload ---------------------------------------------------------------------------------

    def _prepare(self, partition: int, entries: Sequence[StreamEntry], tally: Tally) -> list[Work]:
        """Decode and transform; skip or dead-letter what cannot be sent (committed at once)."""
        now = self.clock()
        works: list[Work] = []
        acks: list[bytes] = []
        letters: list[Letter] = []
        skipped: list[tuple[str, str]] = []
        stats = TransformStats()
        for entry_id, fields in entries:
            try:
                envelope = Envelope.decode(fields)
                if not isinstance(envelope.message, dict):
                    raise TypeError("message is not an object")
            except (KeyError, ValueError, TypeError):
                raw = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
                error = "not a ctrelay envelope (expected fields w and m, m a JSON object)"
                letters.append(Letter.of(raw.get("w", ""), {"entry": raw}, "invalid_message", now=now, error=error))
                acks.append(entry_id)
                continue
            write_key, message = envelope.write_key, envelope.message
            destination = self.destinations.get(write_key)
            if destination is None:
                error = f"unknown write key {write_key!r}"
                letters.append(Letter.of(write_key, message, "invalid_message", now=now, error=error))
                acks.append(entry_id)
                continue
            try:
                result = transform(message, destination, now, stats)
            except Exception as exc:  # a transform bug must not wedge the partition: keep the message
                log.exception("transform_failed", destination=destination.name, message_id=message.get("messageId"))
                error = f"transform failed: {type(exc).__name__}: {exc}"[:500]
                letters.append(Letter.of(write_key, message, "invalid_message", now=now, error=error))
                acks.append(entry_id)
                continue
            if isinstance(result, Invalid):
                letters.append(Letter.of(write_key, message, "invalid_message", now=now, error=result.reason))
                acks.append(entry_id)
            elif isinstance(result, Skip) or not result:
                skipped.append((destination.name, result.reason if isinstance(result, Skip) else "no_records"))
                acks.append(entry_id)
            else:
                works.append(Work(write_key, message, result, entry_id=entry_id))
        if acks:
            with self.client.pipeline(transaction=True) as pipe:
                for letter in letters:
                    self.deadletters.add(pipe, letter)
                pipe.xack(self.keys.stream(partition), GROUP, *acks)
                pipe.execute()
        for letter in letters:
            metrics.deadletters_written.labels(self._name(letter.write_key), letter.reason, "").inc()
        for name, reason in skipped:
            metrics.messages_skipped.labels(name, reason).inc()
        if stats.keys_dropped:
            metrics.transform_keys_dropped.inc(stats.keys_dropped)
        if stats.values_truncated:
            metrics.transform_values_truncated.inc(stats.values_truncated)
        tally.deadlettered += len(letters)
        tally.skipped += len(skipped)
        return works

    def _name(self, write_key: str) -> str:
        destination = self.destinations.get(write_key)
        return destination.name if destination is not None else write_key

    def _drop_sent_tokens(self, works: list[Work]) -> None:
        """Mark token records already delivered for their objectId within the window (or earlier in this batch)."""
        checks: list[tuple[Work, int, str, str]] = []
        for work in works:
            destination = self.destinations.get(work.write_key)
            if destination is None or destination.token_dedup_window <= 0:
                continue
            for index, record in enumerate(work.records):
                if record.get("type") == "token" and record.get("objectId"):
                    key = self.keys.token_sent(work.write_key, str(record["objectId"]))
                    checks.append((work, index, key, str((record.get("tokenData") or {}).get("id"))))
        if not checks:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for _, _, key, _ in checks:
                pipe.get(key)
            sent: list[bytes | None] = pipe.execute()
        seen: set[tuple[str, str]] = set()
        for (work, index, key, token), value in zip(checks, sent, strict=True):
            if (value is not None and value.decode("utf-8", "replace") == token) or (key, token) in seen:
                work.verdicts[index] = DELIVERED
                work.deduped.add(index)
            seen.add((key, token))

    # -- uploads -------------------------------------------------------------------------------------------

    def _send(self, destination: Destination, group: list[Work], keepalive: Callable[[], object] | None) -> int:
        """Upload the group's records; set every record's verdict. Returns the number of requests."""
        items = [(work, i) for work in group for i, verdict in enumerate(work.verdicts) if verdict is None]
        paused = self.client.get(self.keys.paused(destination.write_key))
        if paused is not None:
            status = int(paused)
            verdict = Verdict("auth", "auth", status, None, f"destination paused after HTTP {status}")
            for work, index in items:
                work.verdicts[index] = verdict
            return 0
        requests = 0
        pending = list(chunks(items))
        for number, chunk in enumerate(pending):
            failure, sent = self._upload(destination, chunk, keepalive)
            requests += sent
            if failure is not None:  # the whole request failed: the rest would too; do not hammer
                for rest in pending[number + 1 :]:
                    for work, index in rest:
                        work.verdicts[index] = failure
                break
        return requests

    def _upload(
        self, destination: Destination, chunk: Slice, keepalive: Callable[[], object] | None
    ) -> tuple[Verdict | None, int]:
        """One request (halved recursively on a whole-batch 4xx). Returns (batch-wide failure or None, requests)."""
        records = [work.records[index] for work, index in chunk]
        with self.slots.slot(destination.account_id, keepalive=keepalive):
            report = self.clevertap.upload(destination, records)
        self.slots.record(destination.account_id, throttled=report.status == 429)
        verdicts = classify(report)
        self._observe(destination, report, verdicts)
        if verdicts is SPLIT:
            middle = len(chunk) // 2
            first, sent_first = self._upload(destination, chunk[:middle], keepalive)
            if first is not None:
                for work, index in chunk[middle:]:
                    work.verdicts[index] = first
                return first, 1 + sent_first
            second, sent_second = self._upload(destination, chunk[middle:], keepalive)
            return second, 1 + sent_first + sent_second
        assert isinstance(verdicts, list)
        for (work, index), verdict in zip(chunk, verdicts, strict=True):
            work.verdicts[index] = verdict
        first_verdict = verdicts[0] if verdicts else None
        batch_wide = first_verdict is not None and (
            first_verdict.kind == "auth"
            or (first_verdict.kind == "transient" and first_verdict.reason != "record_error")
        )
        if first_verdict is not None and first_verdict.kind == "auth":
            self.client.set(
                self.keys.paused(destination.write_key),
                first_verdict.status or 401,
                px=int(self.policy.auth_pause_s * 1000),
            )
            log.error(
                "destination_paused",
                destination=destination.name,
                status=first_verdict.status,
                pause_s=self.policy.auth_pause_s,
                hint="CleverTap refused the account id / passcode; fix the destination's credentials",
            )
        return (first_verdict if batch_wide else None), 1

    def _observe(self, destination: Destination, report: Report, verdicts: list[Verdict] | object) -> None:
        if verdicts is SPLIT:
            outcome = "split"
        else:
            assert isinstance(verdicts, list)
            kinds = {v.kind for v in verdicts}
            outcome = kinds.pop() if len(kinds) == 1 else "partial"
        metrics.uploads.labels(destination.name, report.label).inc()
        metrics.upload_duration.labels(destination.name).observe(report.duration_s)
        log.info(
            "upload",
            destination=destination.name,
            account=destination.account_id,
            records=report.count,
            status=report.label,
            outcome=outcome,
            failed=len(report.failures),
            duration_ms=round(report.duration_s * 1000, 1),
            error=report.error or None,
        )

    # -- outcomes ------------------------------------------------------------------------------------------

    def _commit(
        self, partition: int, schedule: RetrySchedule, destination: Destination, group: list[Work], tally: Tally
    ) -> None:
        """Write every message's outcome and ack its entry, in one MULTI."""
        now = self.clock()
        acks: list[bytes] = []
        removals: list[str] = []
        delivered: dict[str, int] = {}
        retried: dict[str, int] = {}
        letters: list[Letter] = []
        with self.client.pipeline(transaction=True) as pipe:
            for work in group:
                verdicts = [v if v is not None else DELIVERED for v in work.verdicts]
                prior = work.retry
                attempts = (prior.attempts if prior else 0) + 1
                first = prior.first_failure if prior else None
                outcome = decide(
                    verdicts, attempts=attempts, first_failure=first, now=now, policy=self.policy, rng=self.rng
                )
                for index, verdict in enumerate(verdicts):
                    if verdict.kind == "delivered" and index not in work.deduped:
                        record = work.records[index]
                        kind = str(record.get("type"))
                        delivered[kind] = delivered.get(kind, 0) + 1
                        if kind == "token" and destination.token_dedup_window > 0 and record.get("objectId"):
                            key = self.keys.token_sent(work.write_key, str(record["objectId"]))
                            token = str((record.get("tokenData") or {}).get("id"))
                            pipe.set(key, token, ex=destination.token_dedup_window)
                if isinstance(outcome, Delivered | DeadLetter):
                    if isinstance(outcome, DeadLetter):
                        letter = Letter.of(
                            work.write_key, work.message, outcome.reason, now=now, code=outcome.code,
                            error=outcome.error, status=outcome.status, attempts=attempts, first_failure=first,
                        )  # fmt: skip
                        self.deadletters.add(pipe, letter)
                        letters.append(letter)
                    else:
                        tally.delivered += 1
                    if prior is not None:
                        removals.append(prior.id)
                else:
                    item = RetryItem(
                        id=work.id, write_key=work.write_key, message=work.message,
                        records=[work.records[i] for i in outcome.pending], attempts=attempts,
                        first_failure=now if first is None else first, last_failure=now, reason=outcome.reason,
                        status=outcome.status, code=outcome.code, error=outcome.error,
                    )  # fmt: skip
                    schedule.put(pipe, item, outcome.due)
                    retried[outcome.reason] = retried.get(outcome.reason, 0) + len(outcome.pending)
                    tally.retried += 1
                if work.entry_id is not None:
                    acks.append(work.entry_id)
            if acks:
                pipe.xack(self.keys.stream(partition), GROUP, *acks)
            schedule.remove(pipe, removals)
            pipe.execute()
        tally.deadlettered += len(letters)
        for kind, count in delivered.items():
            metrics.records_delivered.labels(destination.name, kind).inc(count)
        for reason, count in retried.items():
            metrics.records_retried.labels(destination.name, reason).inc(count)
        for letter in letters:
            metrics.deadletters_written.labels(destination.name, letter.reason, str(letter.code or "")).inc()

    def _commit_letters(self, partition: int, group: list[Work], reason: str, error: str, tally: Tally) -> None:
        now = self.clock()
        schedule = RetrySchedule(self.client, self.keys, partition)
        with self.client.pipeline(transaction=True) as pipe:
            for work in group:
                first = work.retry.first_failure if work.retry else None
                attempts = work.retry.attempts if work.retry else 1
                letter = Letter.of(
                    work.write_key, work.message, reason, now=now, error=error, attempts=attempts, first_failure=first
                )
                self.deadletters.add(pipe, letter)
                metrics.deadletters_written.labels(work.write_key, reason, "").inc()
            schedule.remove(pipe, [work.retry.id for work in group if work.retry is not None])
            pipe.execute()
        tally.deadlettered += len(group)
