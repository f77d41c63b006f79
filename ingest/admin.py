"""The admin HTTP API: the dead-letter operations of ``ctrelay dlq`` under ``/admin/deadletters`` (and the
user deletions of ``ctrelay users`` under ``/admin/users``, :mod:`ingest.admin_users`).

Mounted on the ingest app by :func:`mount` only when ``CTRELAY_ADMIN_TOKEN`` is set (otherwise every
``/admin/...`` path answers 404, like any unknown path). Every request must carry
``Authorization: Bearer <token>``; the comparison is constant-time (:func:`hmac.compare_digest`); a
missing or wrong token gets 401. Nothing here returns a passcode: letters hold Segment messages only,
and the transform preview holds CleverTap records only. The work is done by :mod:`worker.dlq`, with a
synchronous Redis client (FastAPI runs these routes in its thread pool).

Filters are query parameters (GET) or body fields (POST): ``reason code event type destination since
until limit`` (times: epoch seconds, ISO 8601, or an age such as ``2h``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Annotated, Any

import redis
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from ingest import body as bodies
from ingest.routes import error_response
from worker import dlq
from worker.deadletters import DeadLetterStore, Filter
from worker.destinations import Destination
from worker.errors import OperatorError, RequestError
from worker.queue import Keys, Producer
from worker.settings import Config

log = structlog.get_logger("ctrelay.admin")
PREFIX = "/admin/deadletters"
LIST_LIMIT = 100


class Selection(BaseModel):
    """Which letters a POST applies to: ``ids``, or ``all`` narrowed by the filters."""

    ids: list[str] = Field(default_factory=list)
    all: bool = False
    reason: str | None = None
    code: int | None = None
    event: str | None = None
    type: str | None = None
    destination: str | None = None
    since: str | float | None = None
    until: str | float | None = None
    limit: int | None = None

    def filter(self) -> Filter:
        if not self.ids and not self.all:
            raise OperatorError('give "ids", or "all": true (with filters to narrow it)')
        options = self.model_dump(include=set(Selection.model_fields) - {"ids", "all"})
        return dlq.make_filter(now=time.time(), ids=self.ids, **options)


class ReplayRequest(Selection):
    rate: float = Field(default=100.0, ge=0, description="messages per second (0: no cap)")
    dry_run: bool = False


def _query_filter(
    *,
    reason: str | None = None,
    code: int | None = None,
    event: str | None = None,
    type: str | None = None,
    destination: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
) -> Filter:
    try:
        return dlq.make_filter(
            now=time.time(), reason=reason, code=code, event=event, type=type, destination=destination,
            since=since, until=until, limit=limit,
        )  # fmt: skip
    except OperatorError as exc:
        raise HTTPException(400, str(exc)) from None


Where = Annotated[Filter, Depends(_query_filter)]
"""A route parameter: the filter of the query string."""

_bearer = HTTPBearer(auto_error=False, description="the admin token, CTRELAY_ADMIN_TOKEN")


def build_router(
    store: DeadLetterStore,
    producer: Producer,
    destinations: Mapping[str, Destination],
    token: str,
    *,
    import_limit: int = 64 * 1024 * 1024,
) -> APIRouter:
    """The admin routes over ``store``; every route requires the Bearer ``token``.

    An import body larger than ``import_limit`` bytes is refused (400 ``body_too_large``), unread past it."""
    expected = token.encode("utf-8")

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if not hmac.compare_digest(given, expected):  # constant time, whatever was given
            raise HTTPException(401, "admin token required: Authorization: Bearer <CTRELAY_ADMIN_TOKEN>")

    def retain() -> None:
        """Retention applies before an operator looks, even when no letter came lately."""
        store.expire(time.time())

    router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(authorize), Depends(retain)])

    @router.get("/stats")
    def stats(where: Where) -> dict[str, Any]:
        """Counts by reason, and by (reason, code, event, destination)."""
        return dlq.stats(store, where).to_dict()

    @router.get("")
    def list_letters(where: Where) -> dict[str, Any]:
        """The matching letters, newest first (at most ``limit``, default 100)."""
        if where.limit is None:
            where = Filter(**{**_fields(where), "limit": LIST_LIMIT})
        letters = [letter.to_dict() for letter in store.scan(where)]
        return {"count": len(letters), "letters": letters}

    @router.get("/export", response_class=StreamingResponse)
    def export(where: Where) -> StreamingResponse:
        """The matching letters as JSON lines, oldest first (the format ``import`` reads)."""
        return StreamingResponse(dlq.export(store, where), media_type="application/x-ndjson")

    @router.get("/{letter_id}")
    def show(letter_id: str) -> dict[str, Any]:
        """One letter whole, and what today's transform makes of its message."""
        letter = store.get(letter_id)
        if letter is None:
            raise HTTPException(404, f"no dead letter {letter_id!r}")
        return {"letter": letter.to_dict(), "transform": dlq.preview(letter, destinations, time.time())}

    @router.delete("/{letter_id}")
    def delete(letter_id: str) -> dict[str, int]:
        """Delete one letter (404 when there is none)."""
        if not store.delete([letter_id]):
            raise HTTPException(404, f"no dead letter {letter_id!r}")
        return {"deleted": 1}

    @router.post("/replay")
    def replay(body: ReplayRequest) -> dict[str, Any]:
        """Put letters back into the delivery queue, at ``rate`` messages/s; ``dry_run`` says what would be sent."""
        where = _checked(body)
        return dlq.replay(store, producer, destinations, where, rate=body.rate, dry_run=body.dry_run).to_dict()

    @router.post("/purge")
    def purge(body: Selection) -> dict[str, int]:
        """Delete the selected letters for good."""
        return {"deleted": dlq.purge(store, _checked(body))}

    @router.post("/import", response_model=None)
    async def import_letters(request: Request) -> dict[str, Any] | Response:
        """Add letters from a JSON lines body (the export format); bad lines are listed, not imported."""
        too_large = RequestError(
            400,
            "body_too_large",
            f"import body larger than {import_limit} bytes: split it, or raise CTRELAY_MAX_IMPORT_BYTES",
        )
        try:  # bounded: refused as soon as more than import_limit bytes arrive
            raw = await bodies.read(request.stream(), request.headers.get("content-length"), import_limit)
        except RequestError:
            return error_response(too_large, 0)
        if len(raw) > import_limit:  # (read allows a little slack, meant for compressed bodies)
            return error_response(too_large, 0)
        result = await run_in_threadpool(dlq.import_lines, store, raw.splitlines())
        return result.to_dict()

    return router


def _checked(selection: Selection) -> Filter:
    try:
        return selection.filter()
    except OperatorError as exc:
        raise HTTPException(400, str(exc)) from None


def _fields(where: Filter) -> dict[str, Any]:
    return {name: getattr(where, name) for name in Filter.__slots__}


def mount(app: FastAPI, config: Config) -> bool:
    """Add the admin routes to ``app`` when an admin token is set; returns whether it did."""
    settings = config.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not token:
        return False
    keys = Keys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    app.state.admin_redis = client  # closed with the app (ingest's lifespan)

    async def unavailable(_: Request, exc: Exception) -> Response:
        """Redis does not answer an admin request: 503 with Retry-After (a server fault, not a crash)."""
        log.warning("admin request: redis unavailable", error=type(exc).__name__)
        error = RequestError(503, "queue_unavailable", "Redis does not answer; retry later")
        return error_response(error, settings.retry_after)

    app.add_exception_handler(redis.RedisError, unavailable)
    store = DeadLetterStore(client, keys, settings.deadletter_retention)
    producer = dlq.replay_producer(keys, settings.partitions)
    app.include_router(
        build_router(store, producer, config.destinations, token, import_limit=settings.max_import_bytes)
    )
    from ingest import admin_users  # user deletion: /admin/users (same token)

    window = settings.suppression_window_s
    app.include_router(admin_users.build_router(client, keys, producer, config.destinations, token, window_s=window))
    return True
