"""Delivering one batch: stream entries and due retries in, outcomes written and acknowledged out.

:meth:`Deliverer.deliver` decodes each entry (a foreign or broken one becomes an ``invalid_message``
dead letter), transforms it (pure), screens out deleted users (:mod:`worker.delivery.screen`), drops push-token
records already sent for that objectId within the destination's window, groups the records by destination,
uploads them (:mod:`worker.delivery.uploads`) and commits each destination's outcomes
(:mod:`worker.delivery.outcomes`). An entry is acknowledged only with or after the write that makes its outcome
durable (:mod:`worker.store.ordered`: a crash between costs a repeat, never a loss); a crash before leaves it pending,
to be reclaimed (at-least-once: duplicates only after a crash between an upload and its commit). The drain's
``keepalive`` is asked before every upload and commit (:class:`~worker.core.errors.DrainStopped`). A commit that
fails because Redis does not answer is tried again for up to ``commit_patience_s`` (the lease's TTL in a worker)
while the lease is not known lost, so that a Redis blip after CleverTap's 200 does not send the batch again; what
is sent again anyway is counted in ``ctrelay_duplicates_suspected_total{cause}`` (``commit_failed``,
``lease_lost``, ``stopped``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import orjson
import redis
import structlog

from worker.core.destinations import Destination
from worker.core.errors import DrainStopped
from worker.core.keys import FIELD_MESSAGE, FIELD_WRITE_KEY, Keys
from worker.delivery import metrics
from worker.delivery.clevertap import CleverTap
from worker.delivery.gate import Gate
from worker.delivery.outcomes import OutcomeWriter
from worker.delivery.policy import DELIVERED, RetryPolicy
from worker.delivery.screen import Screen
from worker.delivery.uploads import Uploader
from worker.delivery.work import StreamEntry, Tally, Work
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter
from worker.store.ordered import write_in_order
from worker.store.retries import RetryItem, RetrySchedule
from worker.store.slots import AccountSlots
from worker.store.streams import ack_and_delete, free_done
from worker.store.suppressions import Suppressions
from worker.transform.deletions import Delete
from worker.transform.records import Invalid, Skip, TransformStats, transform

log = structlog.get_logger("ctrelay.delivery")


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
        suppression_window_s: float = 30 * 86_400,
        commit_patience_s: float = 30.0,
    ) -> None:
        self.client = client
        self.recent_write_keys: tuple[str, ...] = ()
        """The write keys of the last batch delivered (any thread's): those whose suppressions' versions the next
        read asks with it (:meth:`prefetch`)."""
        self._prefetched = threading.local()
        self.commit_patience_s = commit_patience_s
        self.keys = keys
        self.destinations = destinations
        self.deadletters = deadletters
        self.clock = clock
        self.suppressions = Suppressions(client, keys, suppression_window_s, clock)
        self.screen = Screen(client, keys, self.suppressions, clock, self._name)
        self.gate = Gate()  # the drain's turns at the process's Python (worker.delivery.gate)
        self.uploader = Uploader(client, keys, clevertap=clevertap, slots=slots, policy=policy, gate=self.gate)
        self.outcomes = OutcomeWriter(
            client, keys, deadletters=deadletters, policy=policy, clock=clock, rng=rng or random.Random()
        )

    def deliver(
        self,
        partition: int,
        entries: Sequence[StreamEntry],
        retries: Sequence[RetryItem] = (),
        *,
        keepalive: Callable[[], object] | None = None,
        deadline: float | None = None,
        schedule: RetrySchedule | None = None,
    ) -> Tally:
        """Deliver ``entries`` (read from ``partition``) and due ``retries``; write and ack every outcome.

        ``schedule`` is the partition's retry schedule (the drain's; made here when not given). Raises
        :class:`~worker.core.errors.DrainStopped` (before an upload or a commit) when ``keepalive`` answers
        ``False`` or no upload slot comes by ``deadline`` (monotonic): the entries not committed stay pending."""
        schedule = schedule if schedule is not None else RetrySchedule(self.client, self.keys, partition)
        prefetched = getattr(self._prefetched, "batch", None)
        self._prefetched.batch = None
        versions = prefetched[1] if prefetched is not None and prefetched[0] is entries else None
        tally = Tally()
        works, groups, mixed = self._prepare(partition, entries, tally)
        for item in retries:
            work = Work(item.write_key, item.message, list(item.records), retry=item)
            works.append(work)
            _add(groups, work)
            mixed.add(item.write_key)
        # deleted users: suppress, drop their work (a deletion is always among the mixed)
        write_keys = list(groups)
        if write_keys:
            self.recent_write_keys = tuple(write_keys)
        kept = self.screen.screen(
            partition, works, tally, schedule, write_keys=write_keys, deletions=bool(mixed), versions=versions
        )
        if kept is not works:  # some were dropped: group what is left
            groups = {}
            for work in kept:
                _add(groups, work)
        if mixed:
            self._drop_sent_tokens(kept)
        for write_key, group in groups.items():
            destination = self.destinations.get(write_key)
            if destination is None:  # a retry item whose destination was removed from the configuration
                if keepalive is not None and keepalive() is False:  # (uploads and commits ask it themselves)
                    raise DrainStopped("partition lease lost")
                error = f"unknown write key {write_key!r}"
                self.outcomes.dead_letter(schedule, group, "invalid_message", error, tally, name=self._name(write_key))
                continue
            # the fast path: a plain group (no retries, tokens or deletions) that CleverTap took whole
            delivered = False
            held = None
            try:
                if write_key in mixed:
                    tally.uploads += self.uploader.send(destination, group, keepalive, deadline)
                else:  # its commit goes with the last request's slot release (one round trip), where it can
                    held = self.outcomes.held_commit(partition, group, keepalive)
                    requests, delivered = self.uploader.send_plain(destination, group, keepalive, deadline, held)
                    tally.uploads += requests
            except DrainStopped:  # what this group already delivered is sent again with its entries
                _suspect(group, "stopped")
                raise
            if delivered and held is not None and held.held is not None:  # committed with the release, or not held
                if not held.held:
                    _suspect(group, "lease_lost", len(group))
                    raise DrainStopped("partition lease lost")
                self.outcomes.delivered(destination, group, tally)
            elif delivered:
                write = partial(self.outcomes.commit_delivered, partition, destination, group, tally)
                self._commit(group, keepalive, destination.name, write, sent=len(group))
            else:
                write = partial(self.outcomes.commit, partition, schedule, destination, group, tally)
                self._commit(group, keepalive, destination.name, write)
        return tally

    def prefetch(self, entries: Sequence[StreamEntry], versions: Mapping[str, tuple[Any, int]]) -> None:
        """The suppressions' versions read in the round trip of ``entries``'s read (after it), for this thread's
        :meth:`deliver` of those very entries (any other batch ignores them)."""
        self._prefetched.batch = (entries, versions)

    def _commit(
        self,
        group: list[Work],
        keepalive: Callable[[], object] | None,
        name: str,
        write: Callable[[], None],
        sent: int | None = None,
    ) -> None:
        """Write the group's outcomes (``write``); while Redis does not answer, try again (up to
        ``commit_patience_s``, as long as the lease is not known lost), so that what CleverTap took is not sent
        again after a Redis blip. ``sent``: the records CleverTap took, when their verdicts are not set (fast path)."""
        until = time.monotonic() + self.commit_patience_s
        wait = 0.05
        while True:
            try:
                if keepalive is not None and keepalive() is False:  # another holder now has these entries
                    _suspect(group, "lease_lost", sent)
                    raise DrainStopped("partition lease lost")
                write()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() >= until:
                    _suspect(group, "commit_failed", sent)
                    raise DrainStopped(f"outcomes not written in {self.commit_patience_s} s: {exc}") from exc
                log.warning("commit_retrying", destination=name, error=f"{type(exc).__name__}: {exc}")
                with self.gate.outside():
                    time.sleep(wait)
                wait = min(wait * 2, 1.0)

    # -- before any upload ---------------------------------------------------------------------------------

    def _prepare(
        self, partition: int, entries: Sequence[StreamEntry], tally: Tally
    ) -> tuple[list[Work], dict[str, list[Work]], set[str]]:
        """Decode and transform; skip or dead-letter what cannot be sent (committed at once). Returns the works, the
        same grouped by write key (in the order of their first work), and the write keys of the *mixed* ones (a token
        or a deletion record among them: not for the fast path).

        One pass over the entries; a plain message (one event or profile record) costs a decode, its transform and
        one :class:`Work`, put in its group at once (its write key is decoded and its destination looked up once per
        run of entries of one write key: a batch mostly has one)."""
        now = self.clock()
        works: list[Work] = []
        groups: dict[str, list[Work]] = {}
        mixed: set[str] = set()
        acks: list[bytes] = []
        skipped_acks: list[bytes] = []
        letters: list[Letter] = []
        skipped: list[tuple[str, str]] = []
        stats = TransformStats()
        destinations = self.destinations
        group: list[Work] | None = None
        group_key: str | None = None  # the write key of ``group`` (a batch mostly has one)
        key_bytes: bytes | None = None  # the last entry's write key as read, decoded to ``write_key``
        write_key = ""
        destination: Destination | None = None
        for entry_id, fields in entries:
            try:  # Envelope.read, inlined; ingest's entry is the flat [w, <write key>, m, <message>]
                if fields.__class__ is list and len(fields) == 4 and fields[0] == FIELD_WRITE_KEY:
                    data = fields[3] if fields[2] == FIELD_MESSAGE else _field(fields, FIELD_MESSAGE)
                    raw_key = fields[1]
                else:
                    data = _field(fields, FIELD_MESSAGE)
                    raw_key = _field(fields, FIELD_WRITE_KEY)
                if raw_key != key_bytes:  # decoded and looked up once per run of entries of one write key
                    write_key = raw_key.decode("utf-8")
                    destination, key_bytes = destinations.get(write_key), raw_key
                message = orjson.loads(data)
                if message.__class__ is not dict:
                    raise TypeError("message is not an object")
            except (KeyError, ValueError, TypeError):
                pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2], strict=False)
                raw = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}
                error = "not a ctrelay envelope (expected fields w and m, m a JSON object)"
                letters.append(Letter.of(raw.get("w", ""), {"entry": raw}, "invalid_message", now=now, error=error))
                acks.append(entry_id)
                continue
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
            if result.__class__ is list and len(result) == 1:  # the common message: its bytes kept, not the dict
                work = Work(write_key, data, result, entry_id)
            elif isinstance(result, Delete):
                work = Work(write_key, message, [result.record()], entry_id=entry_id)
                mixed.add(write_key)
            elif isinstance(result, Invalid):
                letters.append(Letter.of(write_key, message, "invalid_message", now=now, error=result.reason))
                acks.append(entry_id)
                continue
            elif isinstance(result, Skip) or not result:
                skipped.append((destination.name, result.reason if isinstance(result, Skip) else "no_records"))
                acks.append(entry_id)
                skipped_acks.append(entry_id)
                continue
            else:
                work = Work(write_key, message, result, entry_id=entry_id)
                mixed.add(write_key)
            works.append(work)
            if write_key != group_key:
                group_key = write_key
                group = groups.get(write_key)
                if group is None:
                    group = groups[write_key] = []
            assert group is not None
            group.append(work)
        if acks:  # the letters, then the acks (in one MULTI, or in that order on a cluster: worker/store/ordered.py)
            stream = self.keys.stream(partition)
            try:
                steps = self.outcomes.outside(letters)
                write_in_order(self.client, *steps, (True, lambda pipe: ack_and_delete(pipe, stream, acks)))
            except redis.OutOfMemoryError:  # Redis is full: ack the skipped alone; the invalid ones wait for memory
                retry_keys = (self.keys.retry_items(partition), self.keys.retry_due(partition))  # same slot
                free_done(self.client, stream, skipped_acks, retry_keys, [])
                letters = []
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
        return works, groups, mixed

    def _name(self, write_key: str) -> str:
        """A destination's name for metrics and logs; ``unknown`` for a write key no longer configured (a write
        key is never a label: /metrics is unauthenticated)."""
        destination = self.destinations.get(write_key)
        return destination.name if destination is not None else "unknown"

    def _drop_sent_tokens(self, works: list[Work]) -> None:
        """Mark token records already delivered for their objectId within the window (or earlier in this batch)."""
        checks: list[tuple[Work, int, str, str]] = []
        for work in works:
            if work.retry is None and len(work.records) == 1:  # a token record comes second, after the message's own
                continue
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
                work.deduped = work.deduped | {index}
            seen.add((key, token))


def _field(fields: dict[bytes, bytes] | list[bytes], name: bytes) -> bytes:
    """A stream entry's field (its fields as a dict or as a flat list of names and values); KeyError when absent."""
    if isinstance(fields, dict):
        return fields[name]
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            return fields[index + 1]
    raise KeyError(name)


def _add(groups: dict[str, list[Work]], work: Work) -> None:
    """Put ``work`` in its write key's group."""
    group = groups.get(work.write_key)
    if group is None:
        groups[work.write_key] = [work]
    else:
        group.append(work)


def _suspect(group: list[Work], cause: str, sent: int | None = None) -> None:
    """Count the records of ``group`` CleverTap took that will be sent again (their outcome is not written);
    ``sent``: that count, when the verdicts were not set (the fast path)."""
    if sent is None:
        sent = sum(
            1
            for work in group
            for i, verdict in enumerate(work.verdicts)
            if verdict is not None and verdict.kind == "delivered" and i not in work.deduped
        )
    if sent:
        metrics.duplicates_suspected.labels(cause).inc(sent)
