"""Writing outcomes: per destination group, every message's outcome and the ack of its entry.

:meth:`OutcomeWriter.commit` turns each message's record verdicts into its outcome
(:func:`worker.delivery.policy.decide`) and writes, in this order (:func:`~worker.store.ordered.write_in_order`:
one MULTI on a single Redis; on a Redis Cluster, where one transaction cannot span hash tags, one step after the
other):

1. the dead letters (the ``{dlq}`` keys, :meth:`~worker.store.deadletters.DeadLetterStore.add`);
2. the token markers of delivered push tokens (single keys);
3. the partition's own keys (tag ``{p<n>}``): the retry-schedule items (only the records still to send), the
   removal of finished retry items, and the XACK and XDEL of the stream entries.

An entry is acknowledged only together with, or after, the write that makes its outcome durable. On a cluster a
crash (or a Redis error) between the steps leaves the entries pending: they are read and uploaded again (a repeat),
and their dead letters written again, replacing themselves (a letter's id is derived from write key and
messageId); nothing is lost. When Redis is full, only what frees memory is written (:meth:`OutcomeWriter.commit`),
so that delivery frees memory. A group that was delivered whole on the fast path is only acknowledged
(:meth:`OutcomeWriter.commit_delivered`: the partition's keys alone, one MULTI in every mode). On a single Redis that
acknowledgement goes with the upload's slot release, in its round trip (:class:`HeldCommit`): one script on the
partition's keys that checks the drain's lease token, renews the lease and acknowledges and deletes the entries,
atomically, so that a drain that lost its lease commits nothing, as when the lease is checked first.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog

from worker.core.destinations import Destination
from worker.core.keys import Keys
from worker.delivery import metrics
from worker.delivery.policy import DeadLetter, Delivered, RetryPolicy, Verdict, decide
from worker.delivery.work import Folding, Tally, Work
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter
from worker.store.ordered import Step, write_in_order
from worker.store.retries import RetryItem, RetrySchedule
from worker.store.streams import COMMIT_HELD, ack_and_delete, free_done, queue_commit_held

log = structlog.get_logger("ctrelay.delivery")

NOT_SENT = Verdict("transient", "not_sent", None, None, "record was not sent")


class OutcomeWriter:
    """Decides and durably writes the outcomes of a batch's messages."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        deadletters: DeadLetterStore,
        policy: RetryPolicy,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.client = client
        self.keys = keys
        self.deadletters = deadletters
        self.policy = policy
        self.clock = clock
        self.rng = rng

    def commit(
        self, partition: int, schedule: RetrySchedule, destination: Destination, group: list[Work], tally: Tally
    ) -> None:
        """Decide every message's outcome; write it, then ack its entry (the two steps of the module docstring).
        Safe to call again after a connection error (the tally and the counters move only once everything is
        written).

        When Redis is full (``noeviction`` OOM: it refuses every command of a MULTI), only what frees memory is
        written: the delivered messages' entries are acknowledged and deleted and their finished retry items
        removed (:func:`~worker.store.streams.free_done`); the others (retries, dead letters, and the delivered
        push tokens' markers) are not written, their entries stay pending and are done again once memory is back."""
        now = self.clock()
        done_acks: list[bytes] = []  # delivered: its outcome is only the ack (and the removal of its retry item)
        done_removals: list[str] = []
        acks: list[bytes] = []
        removals: list[str] = []
        delivered: dict[str, int] = {}
        retried: dict[str, int] = {}
        letters: list[Letter] = []
        markers: list[tuple[str, str, int]] = []
        items: list[tuple[RetryItem, float]] = []
        done = Tally()
        for work in group:
            verdicts = [v if v is not None else NOT_SENT for v in work.verdicts]  # never assume delivery
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
                        markers.append((key, token, destination.token_dedup_window))
            if isinstance(outcome, Delivered):
                done.delivered += 1
                if work.entry_id is not None:
                    done_acks.append(work.entry_id)
                if prior is not None:
                    done_removals.append(prior.id)
                continue
            if isinstance(outcome, DeadLetter):
                letters.append(
                    Letter.of(
                        work.write_key,
                        work.message,
                        outcome.reason,
                        now=now,
                        code=outcome.code,
                        error=outcome.error,
                        status=outcome.status,
                        attempts=attempts,
                        first_failure=first,
                    )
                )
                if prior is not None:
                    removals.append(prior.id)
            else:
                item = RetryItem(
                    id=work.id, write_key=work.write_key, message=work.message,
                    records=[work.records[i] for i in outcome.pending], attempts=attempts,
                    first_failure=now if first is None else first, last_failure=now, reason=outcome.reason,
                    status=outcome.status, code=outcome.code, error=outcome.error,
                )  # fmt: skip
                items.append((item, outcome.due))
                retried[outcome.reason] = retried.get(outcome.reason, 0) + len(outcome.pending)
                done.retried += 1
            if work.entry_id is not None:
                acks.append(work.entry_id)
        stream = self.keys.stream(partition)
        try:

            def partition_keys(pipe: Any) -> None:
                for item, due in items:
                    schedule.put(pipe, item, due)
                ack_and_delete(pipe, stream, done_acks + acks)
                schedule.remove(pipe, done_removals + removals)

            write_in_order(self.client, *self.outside(letters, markers), (True, partition_keys))
        except redis.OutOfMemoryError:
            free_done(self.client, stream, done_acks, (schedule.items_key, schedule.due_key), done_removals)
            log.warning(
                "commit_reduced",
                reason="Redis is full (maxmemory): only delivered messages were acknowledged",
                destination=destination.name,
                delivered=done.delivered,
                left_pending=len(group) - done.delivered,
            )
            letters, retried, done.retried = [], {}, 0
        tally.add(done)
        tally.deadlettered += len(letters)
        for kind, count in delivered.items():
            metrics.records_delivered.labels(destination.name, kind).inc(count)
        for reason, count in retried.items():
            metrics.records_retried.labels(destination.name, reason).inc(count)
        for letter in letters:
            metrics.deadletters_written.labels(destination.name, letter.reason, str(letter.code or "")).inc()

    def outside(self, letters: list[Letter], markers: Sequence[tuple[str, str, int]] = ()) -> list[Step]:
        """The steps before the partition's: the dead letters (tag ``{dlq}``), the token markers (key, token,
        window; single keys)."""

        def deadletters(pipe: Any) -> None:
            for letter in letters:
                self.deadletters.add(pipe, letter)

        def tokens(pipe: Any) -> None:
            for key, token, window in markers:
                pipe.set(key, token, ex=window)

        return [(True, deadletters), (False, tokens)]

    def held_commit(self, partition: int, group: list[Work], keepalive: object) -> HeldCommit | None:
        """The fast path's commit of ``group`` to send with its upload's slot release (:class:`HeldCommit`), when
        ``keepalive`` can fold the lease check into it (a :class:`~worker.delivery.work.Folding`: a drain's
        :class:`~worker.delivery.drain.Keepalive`); else None (then :meth:`commit_delivered`, after the keepalive)."""
        if not isinstance(keepalive, Folding):
            return None
        ids = [work.entry_id for work in group if work.entry_id is not None]
        return HeldCommit(self.client, self.keys.stream(partition), ids, keepalive) if ids else None

    def delivered(self, destination: Destination, group: list[Work], tally: Tally) -> None:
        """Count a plain ``group`` delivered whole and committed (:meth:`commit_delivered`, :class:`HeldCommit`)."""
        tally.delivered += len(group)
        kinds = [work.records[0].get("type") for work in group]
        for kind in dict.fromkeys(kinds):  # a plain group holds one kind or two (event, profile): C-speed counts
            metrics.records_delivered.labels(destination.name, str(kind)).inc(kinds.count(kind))

    def commit_delivered(self, partition: int, destination: Destination, group: list[Work], tally: Tally) -> None:
        """The fast path's commit: every message of the plain ``group`` (read from the stream, one event or profile
        record each, see :meth:`~worker.delivery.uploads.Uploader.send_plain`) was delivered, so its outcome is the
        acknowledgement alone: one MULTI on the partition's stream (one hash tag), no verdict read, no decision.
        When Redis is full it is written as :meth:`commit` writes delivered messages then (it only frees memory)."""
        stream = self.keys.stream(partition)
        acks = [work.entry_id for work in group if work.entry_id is not None]
        try:
            with self.client.pipeline(transaction=True) as pipe:
                ack_and_delete(pipe, stream, acks)
                pipe.execute()
        except redis.OutOfMemoryError:
            free_done(self.client, stream, acks, ("", ""), [])
        self.delivered(destination, group, tally)

    def dead_letter(
        self, schedule: RetrySchedule, group: list[Work], reason: str, error: str, tally: Tally, *, name: str
    ) -> None:
        """Dead-letter every message of ``group`` with ``reason`` and remove their retry items (in that order; on a
        cluster a crash between leaves the items, dead-lettered again later, replacing their letters); ``name`` is
        the destination's name in the metrics (never its write key)."""
        now = self.clock()
        letters = []
        for work in group:
            first = work.retry.first_failure if work.retry else None
            attempts = work.retry.attempts if work.retry else 1
            letters.append(
                Letter.of(
                    work.write_key, work.message, reason, now=now, error=error, attempts=attempts, first_failure=first
                )
            )
        ids = [work.retry.id for work in group if work.retry is not None]
        write_in_order(self.client, *self.outside(letters), (True, lambda pipe: schedule.remove(pipe, ids)))
        for _ in letters:
            metrics.deadletters_written.labels(name, reason, "").inc()
        tally.deadlettered += len(group)


class HeldCommit:
    """The fast path's commit sent with the upload's slot release (a :class:`~worker.delivery.work.Fold`): the
    entries acknowledged and deleted by one script that first checks, and renews, the drain's lease
    (:func:`~worker.store.streams.queue_commit_held`). :attr:`held`: None while not written (not sent, no answer, an
    error: the caller commits as usual, which is safe to repeat), True once written, False when the lease was found
    lost (nothing written)."""

    def __init__(self, client: redis.Redis, stream: str, entry_ids: list[bytes], keepalive: Folding) -> None:
        self.client = client
        self.stream = stream
        self.entry_ids = entry_ids
        self.keepalive = keepalive
        self.held: bool | None = None
        self._sent: tuple[list[Any], list[Any], float] | None = None

    def queue(self, pipe: Any) -> None:
        lease = self.keepalive.fold()
        if lease is None:  # known lost: nothing sent; the caller's keepalive says so
            return
        asked = time.monotonic()
        keys, args = queue_commit_held(pipe, self.stream, lease, self.entry_ids)
        self._sent = (keys, args, asked)

    def read(self, answers: list[Any]) -> None:
        if self._sent is None or not answers:
            return
        keys, args, asked = self._sent
        try:
            written = int(COMMIT_HELD.answer(self.client, answers[0], keys, args))
        except redis.RedisError as exc:  # not written (or not known written): committed again as usual
            log.warning("held_commit_failed", stream=self.stream, error=f"{type(exc).__name__}: {exc}")
            return
        self.held = written >= 0
        self.keepalive.folded(self.held, asked)
