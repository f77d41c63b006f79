"""The Tracking API's request handling: one request in, its accepted messages in Redis, one answer out.

A request is refused as a whole (nothing enqueued) when it is malformed, oversize, unauthenticated,
or when the queue cannot take it (503). Otherwise each message is validated, bounded (nesting depth:
``too_deep``), enriched and encoded; in a batch (or a webhook array) an invalid item is dropped and
counted, the rest accepted; a single call's invalid message is its 400. No client input reaches a
500: what cannot be re-encoded is that message's refusal. The answer is 200 only after Redis has
written every accepted message (one round trip, shared with the requests in flight together:
:mod:`ingest.tracking.writes`).

Webhook messages without a ``messageId`` get one derived from the body and the item's place in it
(``webhook-<sha256 of the body>-<index>``), so that a replayed body is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import structlog
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from ingest import body, metrics
from ingest.responses import ACCEPTED, DISCONNECTED, Answer, error_answer
from ingest.tracking import auth, projects
from ingest.tracking.prepare import Kind, Outcome, prepare
from ingest.tracking.writes import Writes
from worker.core.destinations import Destination, Destinations
from worker.core.errors import NotReplicated, RequestError, Unavailable
from worker.core.settings import Settings
from worker.store.producer import Entry, Producer
from worker.store.suppressions import VERSION_FIELD, Suppression, fields_of
from worker.transform.deletions import deletion_of

log = structlog.get_logger("ctrelay.ingest")


@dataclass
class QueueState:
    """What the background measure knows of the queue (per process)."""

    backlog: int = 0
    measured_at: float = 0.0
    partitions_checked: bool = False
    refused: str | None = None
    """Set when Redis's stored partition count differs from this process's (found after start): every request 503s."""


def _items(kind: Kind, document: Any, limit: int) -> tuple[list[Any], dict[str, Any] | None]:
    """The messages a body carries, and the batch's top level (context, sentAt, writeKey) when any.

    One message alone (a single call, or a webhook that is not an array) is refused with a 400 when
    invalid; in a batch or a webhook array, invalid items are dropped and counted.
    """
    if kind == "single":
        if not isinstance(document, dict):
            raise RequestError(400, "invalid_body", "body must be a JSON object (one message)")
        return [document], None
    if kind == "webhook":
        items = document if isinstance(document, list) else [document]
        top = None
    else:
        if not isinstance(document, dict):
            raise RequestError(400, "invalid_body", 'body must be a JSON object {"batch": [...]}')
        batch = document.get("batch")
        if not isinstance(batch, list):
            raise RequestError(400, "invalid_body", "batch: must be an array of messages")
        items = batch
        for name in ("context", "integrations"):
            if document.get(name) is not None and not isinstance(document[name], dict):
                raise RequestError(400, "invalid_body", f"{name}: must be an object")
        top = document
    if len(items) > limit:
        raise RequestError(400, "too_many_messages", f"{len(items)} messages in one request; at most {limit}")
    return items, top


_HEADERS = frozenset((b"content-length", b"content-encoding", b"authorization", b"x-signature"))


def _headers(scope: Scope) -> dict[bytes, str]:
    """The request headers the Tracking API reads, each its first value (as Starlette's ``Headers.get``)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


class _Pending(NamedTuple):
    """A request taken (validated, its entries made), before its write."""

    outcome: Outcome
    destination: Destination
    suppress: tuple[str, str, dict[int, dict[str, str]]] | None


class Ingest:
    """Handles the Tracking API's POSTs for one process: its settings, destinations, Redis and producer."""

    def __init__(
        self, settings: Settings, destinations: Destinations, client: redis.asyncio.Redis, producer: Producer
    ) -> None:
        self.settings = settings
        self.destinations = destinations
        self.client = client
        self.producer = producer
        self.queue = QueueState()
        self.writes = Writes(lambda entries: self.producer.enqueue(self.client, entries), self._write_limit())
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, scope: Scope, receive: Receive, kind: Kind, implied_type: str | None, route: str) -> Answer:
        """Answer one POST (``route``: its template, for metrics); never raises for a client's mistake or an
        unavailable Redis. Called by the Tracking API's dispatch (:mod:`ingest.tracking.dispatch`) and by the
        FastAPI routes of the same paths alike."""
        started = time.perf_counter()
        try:
            headers = _headers(scope)
            raw = await body.receive(receive, headers.get(b"content-length"), self.settings.max_batch_bytes)
            pending = self._take(scope, headers, raw, kind, implied_type)
            self._count(pending, await self._write(pending.outcome.entries, pending.suppress))
            status, answer = 200, ACCEPTED
        except ClientDisconnect:
            log.debug("client went away before its body was read", path=route)
            return DISCONNECTED
        except RequestError as exc:
            status, answer = exc.status, self._refused(exc, route)
        return self._answered(route, status, answer, started)

    def submit(
        self,
        scope: Scope,
        raw: bytes,
        *,
        kind: Kind,
        implied_type: str | None,
        route: str,
        done: Callable[[Answer | BaseException], None],
    ) -> None:
        """:meth:`handle` of a request whose whole body ``raw`` is in, without a task: ``done(answer)`` is called
        with the same answer, at once or once its messages are written (the HTTP protocol's own path,
        :mod:`ingest.connections`). An unexpected error raises here, or is passed to ``done`` as the exception."""
        started = time.perf_counter()
        try:
            pending = self._take(scope, _headers(scope), raw, kind, implied_type)
        except RequestError as exc:
            done(self._answered(route, exc.status, self._refused(exc, route), started))
            return

        def written(result: list[bytes | None] | BaseException) -> None:
            try:
                if isinstance(result, BaseException):
                    raise self._unavailable(result) if isinstance(result, Exception) else result
                self._count(pending, result)
                answer = self._answered(route, 200, ACCEPTED, started)
            except RequestError as exc:
                answer = self._answered(route, exc.status, self._refused(exc, route), started)
            except BaseException as exc:  # unexpected: the protocol answers it as the ASGI path does
                done(exc)
                return
            done(answer)

        if pending.suppress is None:
            self.writes.add(pending.outcome.entries, written)
            return

        outcome = pending.outcome

        async def alone() -> None:
            try:
                result: list[bytes | None] | BaseException = await self._write(outcome.entries, pending.suppress)
            except BaseException as exc:  # (a Redis failure is already its 503: a RequestError)
                result = exc
            written(result)

        task = asyncio.get_running_loop().create_task(alone())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refused(self, exc: RequestError, route: str) -> Answer:
        metrics.refused(exc.code).inc()
        log.info("request refused", path=route, status=exc.status, code=exc.code, reason=exc.message)
        return error_answer(exc, self.settings.retry_after)

    @staticmethod
    def _answered(route: str, status: int, answer: Answer, started: float) -> Answer:
        metrics.answered(route, status).inc()
        metrics.timed(route).observe(time.perf_counter() - started)
        return answer

    def project_settings(self, request: Request, route: str) -> Response:
        """``GET /v1/projects/{writeKey}/settings`` (:func:`ingest.tracking.projects.answer`)."""
        return projects.answer(request, route, self.destinations, self.settings.public_url)

    def _take(
        self, scope: Scope, headers: dict[bytes, str], raw: bytes, kind: Kind, implied_type: str | None
    ) -> _Pending:
        """Everything of a request before its write (RequestError when it is refused as a whole)."""
        settings = self.settings
        limit = settings.max_batch_bytes
        if len(raw) > limit + body.WIRE_SLACK:  # (what body.receive refuses as it reads)
            raise body.too_large(limit)
        data = body.decompress(raw, headers.get(b"content-encoding"), limit)
        if kind == "single" and len(data) > settings.max_message_bytes:
            raise RequestError(400, "message_too_large", f"message larger than {settings.max_message_bytes} bytes")
        document = body.parse_json(data)
        depth = settings.max_depth
        items, top = _items(kind, document, settings.max_batch_messages)
        # flat: no message, enriched or not, can nest past the bound. Not counted for as many items as the bound
        # or more: then the body (its array and items objects) has more brackets than the bound (each message is
        # checked on its own encoding)
        flat = len(items) < depth and body.shallow(data, depth)
        if top is not None and not flat:
            for name in ("context", "integrations"):  # merged into every item, one level down
                if body.too_deep(top.get(name), depth - 1):
                    raise body.deep_error(depth - 1, f"the batch's {name}")

        given: set[str] = set()
        header_key = auth.basic_write_key(headers.get(b"authorization"))
        if header_key:
            given.add(header_key)
        if kind == "webhook":
            query = QueryParams(scope.get("query_string", b""))  # as Starlette's Request.query_params
            given.update(key for key in query.getlist("writeKey") if key)
        else:
            given |= auth.body_write_keys(top, items)
        destination = auth.resolve(self.destinations, given)
        if kind == "webhook":
            auth.check_signature(destination, data, headers.get(b"x-signature"))

        if self.queue.refused is not None:
            raise Unavailable("partitions_mismatch", self.queue.refused)
        cap = settings.backlog_cap
        if cap and self.queue.backlog > cap:
            raise Unavailable("backlog_full", f"the queue holds more than {cap} undelivered messages; retry later")

        digest = hashlib.sha256(data).hexdigest()[:40] if kind == "webhook" else None
        outcome = prepare(
            items,
            top,
            kind,
            implied_type,
            destination,
            settings=settings,
            entry=self.producer.maker(destination.write_key),
            digest=digest,
            flat=flat,
        )
        alone = kind == "single" or (kind == "webhook" and not isinstance(document, list))
        if alone and outcome.error is not None:
            raise outcome.error
        return _Pending(outcome, destination, self._suppression(destination, outcome.deletions))

    def _count(self, pending: _Pending, written: list[bytes | None]) -> None:
        """The metrics and log line of a request whose messages are written."""
        outcome = pending.outcome
        name = pending.destination.name
        duplicates = written.count(None)
        if duplicates:
            accepted = [call for call, stream_id in zip(outcome.types, written, strict=True) if stream_id]
            metrics.duplicates_of(name).inc(duplicates)
        else:
            accepted = outcome.types
        metrics.count_accepted(accepted, name)
        for reason, number in outcome.rejected.items():
            metrics.refused(reason).inc(number)
        if outcome.rejected:
            log.info("batch items refused", destination=name, refused=dict(outcome.rejected), accepted=len(accepted))

    def _suppression(
        self, destination: Destination, deletions: dict[int, dict[str, Any]]
    ) -> tuple[str, str, dict[int, dict[str, str]]] | None:
        """The suppression of the users of accepted ``Delete User`` tracks, for :meth:`Producer.enqueue`: written in
        the script that XADDs each deletion (atomically with it), and only for a deletion that is not a duplicate (a
        client's retry after ``ctrelay users unsuppress`` suppresses nobody again), so that the users' messages
        queued ahead are dropped (:mod:`worker.store.suppressions`) and a failure (503) leaves neither written."""
        if not deletions:
            return None
        now = time.time()
        value = Suppression("", now + self.settings.suppression_window_s, now, "track").encode()
        fields: dict[int, dict[str, str]] = {}
        for index, message in deletions.items():
            deletion = deletion_of(message, destination)
            found = fields_of(deletion.record()) if deletion is not None else []
            if found:
                fields[index] = dict.fromkeys(found, value)
        key = self.producer.keys.suppressed(destination.write_key)
        return key, VERSION_FIELD, fields

    def _write_limit(self) -> float:
        """How long a write may take before its request is answered 503."""
        settings = self.settings
        return settings.redis_timeout * 3 + (settings.min_replicas_timeout_s if settings.min_replicas else 0.0)

    async def _write(
        self, entries: list[Entry], suppress: tuple[str, str, dict[int, dict[str, str]]] | None = None
    ) -> list[bytes | None]:
        """Enqueue in one round trip; any Redis failure or timeout, or too few replicas in time, becomes a 503."""
        limit = self._write_limit()
        try:
            if suppress is None:
                return await self.writes.write(entries)  # with the other requests of this turn, in the same limit
            async with asyncio.timeout(limit):  # (wait_for would make a task per request)
                return await self.producer.enqueue(self.client, entries, suppress)
        except (NotReplicated, redis.RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    @staticmethod
    def _unavailable(exc: Exception) -> Exception:
        """What a failed write answers: a 503 for Redis failing, too few replicas or a timeout; else ``exc``."""
        if isinstance(exc, NotReplicated):
            log.warning("enqueue not replicated", acked=exc.acked, wanted=exc.wanted)
            return Unavailable("replication_timeout", "the queue's replicas did not confirm in time; retry")
        if isinstance(exc, redis.RedisError | OSError | TimeoutError):
            log.warning("redis unavailable", error=type(exc).__name__)
            return Unavailable("queue_unavailable", "the queue is not reachable; retry later")
        return exc
