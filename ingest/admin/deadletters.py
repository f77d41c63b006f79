"""The dead-letter routes of the admin API, under ``/admin/deadletters``: what ``ctrelay dlq`` does, over HTTP.

Filters are query parameters (GET) or body fields (POST), the fields of :class:`worker.store.letters.Filter`:
``reason code event type destination since until limit`` (times: epoch seconds, ISO 8601, or an age such as
``2h``). Nothing here returns a passcode: letters hold Segment messages only, and the transform preview holds
CleverTap records only. The work is done by :mod:`worker.ops.deadletters`, with a synchronous Redis client
(FastAPI runs these routes in its thread pool).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from ingest import body as bodies
from ingest.admin.auth import documented_body, json_body
from ingest.responses import error_response
from worker.core.destinations import Destination
from worker.core.errors import RequestError
from worker.ops import deadletters as dlq
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Filter
from worker.store.producer import Producer

PREFIX = "/admin/deadletters"
LIST_LIMIT = 100


class Selection(Filter):
    """Which letters a POST applies to: ``ids``, or ``all`` narrowed by the filters."""

    all: bool = False

    def checked(self) -> Filter:
        if not self.ids and not self.all:
            raise HTTPException(400, 'give "ids", or "all": true (with filters to narrow it)')
        return Filter.model_validate(self.model_dump(exclude={"all", "rate", "dry_run"}))


class ReplayRequest(Selection):
    rate: float = Field(default=100.0, ge=0, description="messages per second (0: no cap)")
    dry_run: bool = False


Where = Annotated[Filter, Query()]
"""A route parameter: the filter of the query string."""


def build_router(
    store: DeadLetterStore,
    producer: Producer,
    destinations: Mapping[str, Destination],
    authorize: Callable[..., None],
    *,
    import_limit: int = 64 * 1024 * 1024,
    body_limit: int = 1024 * 1024,
    depth: int = 64,
) -> APIRouter:
    """The dead-letter routes over ``store``; every route runs ``authorize`` (the token check) first, and only
    then reads a body (:func:`ingest.admin.auth.json_body`: ``body_limit`` bytes, ``depth`` levels).

    An import body larger than ``import_limit`` bytes is refused (400 ``body_too_large``), unread past it."""

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
            where = where.model_copy(update={"limit": LIST_LIMIT})
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

    @router.post("/replay", openapi_extra=documented_body(ReplayRequest))
    async def replay(request: Request) -> dict[str, Any]:
        """Put letters back into the delivery queue, at ``rate`` messages/s; ``dry_run`` says what would be sent."""
        body = await json_body(request, ReplayRequest, body_limit, depth)
        where = body.checked()
        result = await run_in_threadpool(
            dlq.replay, store, producer, destinations, where, rate=body.rate, dry_run=body.dry_run
        )
        return result.to_dict()

    @router.post("/purge", openapi_extra=documented_body(Selection))
    async def purge(request: Request) -> dict[str, int]:
        """Delete the selected letters for good."""
        body = await json_body(request, Selection, body_limit, depth)
        return {"deleted": await run_in_threadpool(dlq.purge, store, body.checked())}

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
