"""Upload requests for one destination: sized, under an account slot, halved until CleverTap's culprits are alone.

:meth:`Uploader.send` cuts a destination's pending records into requests (≤ 1000 event/profile and ≤ 100
token records, :func:`chunks`), holds an account slot (:mod:`worker.concurrency`) around each request,
adapts the account's cap (429 lowers it), sets every record's :class:`~worker.policy.Verdict`, halves a
request that CleverTap rejects as a whole, pauses the destination on a 401/403, and stops sending the
destination's other requests after a request-wide failure (they would fail alike). One structlog line
``upload`` per request (destination, account, records, status, outcome, duration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import redis
import structlog

from worker import metrics
from worker.clevertap import MAX_RECORDS, MAX_TOKENS, CleverTap, Report
from worker.concurrency import AccountSlots
from worker.destinations import Destination
from worker.policy import SPLIT, RetryPolicy, Verdict, classify
from worker.queue import Keys

if TYPE_CHECKING:
    from worker.batches import Work

log = structlog.get_logger("ctrelay.delivery")
Slice = list[tuple["Work", int]]
"""(message, index of one of its records) pairs, in request order."""


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


class Uploader:
    """Sends a destination's records to CleverTap and reads the answers into per-record verdicts."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, clevertap: CleverTap, slots: AccountSlots, policy: RetryPolicy
    ) -> None:
        self.client = client
        self.keys = keys
        self.clevertap = clevertap
        self.slots = slots
        self.policy = policy

    def send(self, destination: Destination, group: list[Work], keepalive: Callable[[], object] | None) -> int:
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
        if keepalive is not None:  # a batch may take several requests (splits): keep the partition's lease
            keepalive()
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
