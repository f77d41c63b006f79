"""Upload requests for one destination: sized, under an account slot, halved until CleverTap's culprits are alone.

:meth:`Uploader.send` cuts a destination's pending records into requests (≤ 1000 event/profile and ≤ 100
token records, :func:`chunks`), holds an account slot (:mod:`worker.store.slots`) around each request,
adapts the account's cap (429 lowers it), sets every record's :class:`~worker.delivery.policy.Verdict`, halves a
request that CleverTap rejects as a whole, pauses the destination on a 401/403, and stops sending the
destination's other requests after a request-wide failure (they would fail alike). One structlog line
``upload`` per request (destination, account, records, status, outcome, duration) and one
``ctrelay_uploads_total`` count, written once CleverTap answered, whatever Redis does next (giving the slot back,
with the batch's commit on the fast path, adapting the cap, pausing): a Redis failure after the answer never loses
its line or count.
A request without an answer (timeout, network) counts its records in
``ctrelay_duplicates_suspected_total{cause="no_answer"}``: CleverTap may have processed it before the retry.

Deletion records (:mod:`worker.delivery.screen`) go the same way, as CleverTap's profile delete call
(:meth:`~worker.delivery.clevertap.CleverTap.delete`, ≤ 100 identities and ≤ 100 guids per request,
:func:`delete_chunks`), after the destination's uploads (one structlog line ``delete`` per request).

A *plain* group (the common one: read from the stream, one event or profile record per message) takes
:meth:`Uploader.send_plain`: while CleverTap answers every record delivered, no verdict is set per record.

Before each request, split halves included, the drain's ``keepalive`` is asked and the slot wait ends at its
``deadline``: see :class:`~worker.core.errors.DrainStopped`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import redis
import structlog

from worker.core.destinations import Destination
from worker.core.errors import DrainStopped
from worker.core.keys import Keys
from worker.delivery import metrics
from worker.delivery.clevertap import MAX_DELETE_IDS, MAX_RECORDS, MAX_TOKENS, CleverTap, Report
from worker.delivery.gate import Gate
from worker.delivery.policy import DELIVERED, SPLIT, RetryPolicy, Verdict, all_delivered, classify
from worker.delivery.work import Fold, Work
from worker.store.slots import AccountSlots, Paused

log = structlog.get_logger("ctrelay.delivery")
Slice = list[tuple[Work, int]]
"""(message, index of one of its records) pairs, in request order."""
Call = Callable[[Destination, Sequence[Mapping[str, Any]]], Report]


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


def delete_chunks(items: Slice) -> Iterator[Slice]:
    """Cut deletion records, in order, into delete requests of ≤ 100 distinct identities and ≤ 100 distinct guids."""
    chunk: Slice = []
    identities: set[str] = set()
    guids: set[str] = set()
    for work, index in items:
        record = work.records[index]
        more_identities = identities | set(record.get("identity") or ())
        more_guids = guids | set(record.get("guid") or ())
        if chunk and (len(more_identities) > MAX_DELETE_IDS or len(more_guids) > MAX_DELETE_IDS):
            yield chunk
            chunk = []
            more_identities, more_guids = set(record.get("identity") or ()), set(record.get("guid") or ())
        chunk.append((work, index))
        identities, guids = more_identities, more_guids
    if chunk:
        yield chunk


class Uploader:
    """Sends a destination's records to CleverTap and reads the answers into per-record verdicts."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        clevertap: CleverTap,
        slots: AccountSlots,
        policy: RetryPolicy,
        gate: Gate | None = None,
    ) -> None:
        self.gate = gate if gate is not None else Gate()
        self.client = client
        self.keys = keys
        self.clevertap = clevertap
        self.slots = slots
        self.policy = policy

    def send(
        self,
        destination: Destination,
        group: list[Work],
        keepalive: Callable[[], object] | None,
        deadline: float | None = None,
    ) -> int:
        """Upload the group's records; set every record's verdict. Returns the number of requests.

        Raises :class:`~worker.core.errors.DrainStopped` before a request when ``keepalive`` answers ``False`` (the
        lease is lost) or no slot comes by ``deadline`` (monotonic)."""
        items = [(work, i) for work in group for i, verdict in enumerate(work.verdicts) if verdict is None]
        if self._paused(destination, items):
            return 0
        deletes = [item for item in items if item[0].records[item[1]].get("type") == "delete"]
        if deletes:
            items = [item for item in items if item[0].records[item[1]].get("type") != "delete"]
        pending: list[tuple[Call, Slice]] = [(self.clevertap.upload, chunk) for chunk in chunks(items)]
        pending += [(self.clevertap.delete, chunk) for chunk in delete_chunks(deletes)]
        return self._send(destination, pending, keepalive, deadline)

    def send_plain(
        self,
        destination: Destination,
        group: list[Work],
        keepalive: Callable[[], object] | None,
        deadline: float | None = None,
        fold: Fold | None = None,
    ) -> tuple[int, bool]:
        """:meth:`send` for a *plain* group (read from the stream, one event or profile record per message: no
        retries, tokens or deletions), the fast path: requests are slices of the group, and while CleverTap answers
        every record delivered (:func:`~worker.delivery.policy.all_delivered`) no verdict is set. Returns (requests,
        all delivered); when not all were, every record's verdict is set as :meth:`send` sets them (the requests
        before the first other answer delivered, that answer read as usual, the rest sent or not as usual).

        Whether the destination is paused is asked with the first request's slot (in its script on a single Redis:
        :meth:`~worker.store.slots.AccountSlots.try_acquire`), not in a round trip of its own. ``fold``: the group's
        commit, sent with the last request's slot release when CleverTap took that request whole (one round trip
        instead of two; :class:`~worker.store.slots.HeldSlot`)."""
        requests = 0
        for start in range(0, len(group), MAX_RECORDS):
            part = group[start : start + MAX_RECORDS]
            last = fold if start + MAX_RECORDS >= len(group) else None
            paused = self.keys.paused(destination.write_key) if start == 0 else None  # asked with the first slot
            try:
                records = [work.records[0] for work in part]
                report = self._request(destination, records, keepalive, None, deadline, fold=last, paused=paused)
            except Paused as exc:  # nothing sent
                _pause(exc.status, [(work, 0) for work in group])
                return 0, False
            except DrainStopped:  # the requests before this one were delivered: say so (duplicates counted)
                _delivered(group[:start])
                raise
            requests += 1
            if all_delivered(report):
                self._observe(destination, report, "delivered")
                self._adjust(destination, report)
                continue
            _delivered(group[:start])
            chunk: Slice = [(work, 0) for work in part]
            failure, sent = self._answer(destination, chunk, report, keepalive, call=None, deadline=deadline)
            requests += sent - 1
            rest: Slice = [(work, 0) for work in group[start + MAX_RECORDS :]]
            if failure is not None:
                for work, index in rest:
                    work.verdicts[index] = failure
            elif rest:
                more: list[tuple[Call, Slice]] = [(self.clevertap.upload, c) for c in chunks(rest)]
                requests += self._send(destination, more, keepalive, deadline)
            return requests, False
        return requests, True

    def _paused(self, destination: Destination, items: Slice) -> bool:
        """Whether the destination is paused (a 401/403 earlier): then every item's verdict is ``auth``."""
        paused = self.client.get(self.keys.paused(destination.write_key))
        if paused is None:
            return False
        _pause(int(paused), items)
        return True

    def _send(
        self,
        destination: Destination,
        pending: list[tuple[Call, Slice]],
        keepalive: Callable[[], object] | None,
        deadline: float | None,
    ) -> int:
        """Send ``pending`` requests in order; after a request-wide failure, the rest get its verdict unsent."""
        requests = 0
        for number, (call, chunk) in enumerate(pending):
            failure, sent = self._upload(destination, chunk, keepalive, call, deadline)
            requests += sent
            if failure is not None:  # the whole request failed: the rest would too; do not hammer
                for _, rest in pending[number + 1 :]:
                    for work, index in rest:
                        work.verdicts[index] = failure
                break
        return requests

    def _request(
        self,
        destination: Destination,
        records: list[dict[str, Any]],
        keepalive: Callable[[], object] | None,
        call: Call | None,
        deadline: float | None,
        *,
        fold: Fold | None = None,
        paused: str | None = None,
    ) -> Report:
        """One request under an account slot, once the lease is known held; ``fold`` goes with the slot's release
        when CleverTap took the request whole. ``paused``: the destination's pause marker, asked with the slot
        (raises :class:`~worker.store.slots.Paused`, nothing sent)."""
        call = call if call is not None else self.clevertap.upload
        # a batch may take several requests (splits): keep the partition's lease, and send nothing once it is lost
        if keepalive is not None and keepalive() is False:
            raise DrainStopped("partition lease lost")
        timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        slot = self.slots.slot(destination.account_id, keepalive=keepalive, timeout_s=timeout_s, paused_key=paused)
        with self.gate.outside(), slot as held:
            report = call(destination, records)  # the wait for a slot and for the answer: other drains run meanwhile
            if fold is not None and all_delivered(report):
                held.then = fold.queue
        if fold is not None and held.answers is not None:
            fold.read(held.answers)
        return report

    def _upload(
        self,
        destination: Destination,
        chunk: Slice,
        keepalive: Callable[[], object] | None,
        call: Call | None = None,
        deadline: float | None = None,
    ) -> tuple[Verdict | None, int]:
        """One request (halved recursively on a whole-batch 4xx). Returns (batch-wide failure or None, requests)."""
        report = self._request(destination, [work.records[index] for work, index in chunk], keepalive, call, deadline)
        return self._answer(destination, chunk, report, keepalive, call=call, deadline=deadline)

    def _adjust(self, destination: Destination, report: Report) -> None:
        """Adapt the account's cap to the answer (best effort)."""
        try:
            self.slots.record(destination.account_id, throttled=report.status == 429)
        except redis.RedisError as exc:  # the cap adapts on the next answer
            log.warning("cap_not_adjusted", account=destination.account_id, error=f"{type(exc).__name__}: {exc}")

    def _answer(
        self,
        destination: Destination,
        chunk: Slice,
        report: Report,
        keepalive: Callable[[], object] | None,
        *,
        call: Call | None,
        deadline: float | None,
    ) -> tuple[Verdict | None, int]:
        """Read one request's answer into its records' verdicts (halving a whole-batch 4xx); see :meth:`_upload`."""
        # answered: logged and counted once, before anything that needs Redis (which may fail now)
        verdicts = classify(report)
        self._observe(destination, report, _outcome(verdicts), "delete" if call == self.clevertap.delete else "upload")
        if report.status is None:  # no answer: CleverTap may have processed it; the retry may be a second copy
            metrics.duplicates_suspected.labels("no_answer").inc(len(chunk))
        self._adjust(destination, report)
        if verdicts is SPLIT:
            middle = len(chunk) // 2
            first, sent_first = self._upload(destination, chunk[:middle], keepalive, call, deadline)
            if first is not None:
                for work, index in chunk[middle:]:
                    work.verdicts[index] = first
                return first, 1 + sent_first
            second, sent_second = self._upload(destination, chunk[middle:], keepalive, call, deadline)
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
            try:
                self.client.set(
                    self.keys.paused(destination.write_key),
                    first_verdict.status or 401,
                    px=int(self.policy.auth_pause_s * 1000),
                )
            except redis.RedisError as exc:  # not paused: the next request answers 401/403 again
                log.warning("pause_not_written", destination=destination.name, error=f"{type(exc).__name__}: {exc}")
            log.error(
                "destination_paused",
                destination=destination.name,
                status=first_verdict.status,
                pause_s=self.policy.auth_pause_s,
                hint="CleverTap refused the account id / passcode; fix the destination's credentials",
            )
        return (first_verdict if batch_wide else None), 1

    def _observe(self, destination: Destination, report: Report, outcome: str, event: str = "upload") -> None:
        metrics.uploads.labels(destination.name, report.label).inc()
        metrics.upload_duration.labels(destination.name).observe(report.duration_s)
        log.info(
            event,
            destination=destination.name,
            account=destination.account_id,
            records=report.count,
            status=report.label,
            outcome=outcome,
            failed=len(report.failures),
            duration_ms=round(report.duration_s * 1000, 1),
            error=report.error or None,
        )


def _outcome(verdicts: list[Verdict] | object) -> str:
    """The ``outcome`` of an ``upload`` line: ``split``, the one kind of every verdict, or ``partial``."""
    if verdicts is SPLIT:
        return "split"
    assert isinstance(verdicts, list)
    kinds = {v.kind for v in verdicts}
    return kinds.pop() if len(kinds) == 1 else "partial"


def _pause(status: int, items: Slice) -> None:
    """Set every item's verdict ``auth``: the destination is paused after a 401/403 (``status``)."""
    verdict = Verdict("auth", "auth", status, None, f"destination paused after HTTP {status}")
    for work, index in items:
        work.verdicts[index] = verdict


def _delivered(works: list[Work]) -> None:
    """Set the verdict of plain works whose requests CleverTap answered all delivered (:meth:`Uploader.send_plain`)."""
    for work in works:
        work.verdicts[0] = DELIVERED
