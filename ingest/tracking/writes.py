"""Ingest's writes into Redis: the entries of the requests in flight together go in one enqueue.

A request's messages are written by :meth:`worker.store.producer.Producer.enqueue` (one script: per message its
dedup marker and, when new, its XADD) before it is answered. Each call costs the Redis client (redis-py's
asyncio connection pool, command packing, the reply's parsing) about as much CPU as the rest of a single call
together, whatever the number of messages. So :class:`Writes` gathers the entries of every request that reaches
it in the same turn of the event loop (the requests whose bytes arrived together, which is how they arrive
under load), and while a gathered call is in flight, those that come meanwhile (started when it ends: one
gathered call at a time, its size growing with the load), and writes them in one
:meth:`~worker.store.producer.Producer.enqueue`, then hands each request its own part of the answer (its stream
ids, ``None`` for a duplicate), through the future it awaits or the callback it gave (:meth:`Writes.add`, for
ingest's HTTP protocol, which answers without a task per request). What each request is told is what it would
have been told alone:

- **success** only once Redis has written every message of the gathered call, so a 200 still means durable;
- **failure** (Redis down, a timeout, too few replicas, a failed XADD) fails every request of the call with the
  same error (each answers its 503); entries written before the failure keep their dedup markers, so a client's
  retry of those is a duplicate (200), exactly as for the part of one batch written before a failure;
- **dedup** is the script's, message by message in order: two requests in one call that carry the same
  messageId are the first accepted and the second a duplicate, as when they come one after the other;
- **order**: a request's entries stay in order and contiguous; requests in flight together were never ordered.

A request that suppresses deleted users (an accepted ``Delete User`` track) is written alone, as its suppression
fields go in the same script as its entries. A call gathers at most :data:`MOST` entries (a bigger request is
written alone). Every call, gathered or alone, has the time limit ``limit_s`` (past it: ``TimeoutError``, a 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from worker.store.producer import Entry

MOST = 1000
"""Entries one gathered call takes at most (the script's run in Redis grows with it)."""

Enqueue = Callable[[Sequence[Entry]], Awaitable[list[bytes | None]]]
_Sink = asyncio.Future[list[bytes | None]] | Callable[[list[bytes | None] | BaseException], None]
"""Where a request's part of the answer goes: the future :meth:`Writes.write` awaits, or :meth:`Writes.add`'s
callback."""


def _expire(task: asyncio.Task[Any], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


class Writes:
    """Gathers the entries of the requests of one event-loop turn into one ``enqueue(entries)`` call."""

    def __init__(self, enqueue: Enqueue, limit_s: float) -> None:
        self.enqueue = enqueue
        self.limit_s = limit_s
        self._entries: list[Entry] = []
        self._waiting: list[tuple[int, _Sink]] = []
        self._flush: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        """Gathered calls in flight: while one is, the requests that come gather for the next (started when it ends)."""

    async def write(self, entries: list[Entry]) -> list[bytes | None]:
        """Write ``entries`` (with those of the other requests of this turn); their ids, None for a duplicate."""
        if not entries:
            return []
        if len(entries) >= MOST:
            async with asyncio.timeout(self.limit_s):
                return await self.enqueue(entries)
        future: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self._gather(entries, future)
        return await future

    def add(self, entries: list[Entry], done: Callable[[list[bytes | None] | BaseException], None]) -> None:
        """:meth:`write` without a task of the caller's: ``done`` gets the ids (or the exception) when written."""
        if not entries:
            done([])
        elif len(entries) >= MOST:
            self._hold(self._alone(entries, done))
        else:
            self._gather(entries, done)

    async def _alone(self, entries: list[Entry], done: Callable[[list[bytes | None] | BaseException], None]) -> None:
        try:
            written = await self.write(entries)
        except BaseException as exc:  # (cancelled at shutdown too: its request answers it)
            done(exc)
            if not isinstance(exc, Exception):
                raise
            return
        done(written)

    def _gather(self, entries: list[Entry], sink: _Sink) -> None:
        if len(self._entries) + len(entries) > MOST:
            self._start()
        self._entries += entries
        self._waiting.append((len(entries), sink))
        if self._flush is None and not self._running:
            self._flush = asyncio.get_running_loop().call_soon(self._start)  # after every task ready in this turn

    def _hold(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    def _start(self) -> None:
        """Start the call of what is gathered so far (its own task: a request's timeout never cancels it)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        entries, waiting = self._entries, self._waiting
        self._entries, self._waiting = [], []
        if waiting:
            self._running += 1
            self._hold(self._run(entries, waiting))

    async def _limited(self, entries: list[Entry]) -> list[bytes | None]:
        """``enqueue(entries)`` within ``limit_s`` (past it: ``TimeoutError``), in the call's own task: a timer that
        cancels the task (what ``asyncio.timeout`` does, without its bookkeeping: a third of the CPU)."""
        task = asyncio.current_task()
        assert task is not None
        expired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(self.limit_s, _expire, task, expired)
        try:
            return await self.enqueue(entries)
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()

    def _ended(self) -> None:
        self._running -= 1
        if not self._running and self._waiting and self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._start)

    async def _run(self, entries: list[Entry], waiting: list[tuple[int, _Sink]]) -> None:
        try:
            written = await self._limited(entries)
            if len(written) != len(entries):
                raise RuntimeError(f"enqueue answered {len(written)} ids for {len(entries)} entries")
        except BaseException as exc:
            self._ended()  # every request of the call fails with it (cancelled too, at shutdown)
            for _, sink in waiting:
                if not isinstance(sink, asyncio.Future):
                    sink(exc)
                elif sink.done():
                    continue
                elif isinstance(exc, Exception):
                    sink.set_exception(exc)
                else:
                    sink.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        self._ended()
        at = 0
        for count, sink in waiting:
            if not isinstance(sink, asyncio.Future):
                sink(written[at : at + count])
            elif not sink.done():  # (done: that request timed out or went away meanwhile)
                sink.set_result(written[at : at + count])
            at += count
