"""The admin HTTP API for users: ``ctrelay users`` under ``/admin/users`` (same Bearer token as the dead letters).

- ``POST /admin/users/delete`` ``{"destination": WK, "user_id": U}`` (or ``"anonymous_id": A``): suppress the
  user and queue their CleverTap deletion; answers ``202`` with the accepted deletion.
- ``POST /admin/users/unsuppress`` (same body): lift the suppression; ``{"unsuppressed": n}``.
- ``GET /admin/users/suppressed?destination=WK``: the active suppressions.

The work is done by :mod:`worker.ops.users`. Mounted by :func:`ingest.admin.mount.mount` only with an admin token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ingest.admin.auth import documented_body, json_body
from worker.core.destinations import Destination
from worker.core.errors import OperatorError
from worker.core.keys import Keys
from worker.ops import users
from worker.store.producer import Producer

PREFIX = "/admin/users"


class UserRequest(BaseModel):
    """Which user: ``destination`` (a write key) and exactly one of ``user_id`` and ``anonymous_id``."""

    destination: str
    user_id: str | None = None
    anonymous_id: str | None = None


def build_router(
    client: redis.Redis,
    keys: Keys,
    producer: Producer,
    destinations: Mapping[str, Destination],
    authorize: Callable[..., None],
    *,
    window_s: float,
    body_limit: int = 1024 * 1024,
    depth: int = 64,
) -> APIRouter:
    """The user routes; every route runs ``authorize`` (the token check) first, and only then reads a body
    (:func:`ingest.admin.auth.json_body`)."""

    def destination_of(write_key: str) -> Destination:
        try:
            return users.find_destination(destinations, write_key)
        except OperatorError as exc:
            raise HTTPException(404, str(exc)) from None

    router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(authorize)])

    documented = documented_body(UserRequest)

    @router.post("/delete", status_code=202, openapi_extra=documented)
    async def delete(request: Request) -> dict[str, Any]:
        """Delete the user's CleverTap profile (queued, retried, dead-lettered like an upload); suppress the user."""
        body = await json_body(request, UserRequest, body_limit, depth)
        return await run_in_threadpool(_delete, body)

    def _delete(body: UserRequest) -> dict[str, Any]:
        destination = destination_of(body.destination)
        try:
            deletion = users.delete_user(
                client, keys, producer, destination,
                user_id=body.user_id, anonymous_id=body.anonymous_id, window_s=window_s, via="admin",
            )  # fmt: skip
        except OperatorError as exc:
            raise HTTPException(400, str(exc)) from None
        return deletion.to_dict()

    @router.post("/unsuppress", openapi_extra=documented)
    async def unsuppress(request: Request) -> dict[str, int]:
        """Lift the user's suppression: their new messages are delivered again."""
        body = await json_body(request, UserRequest, body_limit, depth)
        return await run_in_threadpool(_unsuppress, body)

    def _unsuppress(body: UserRequest) -> dict[str, int]:
        destination = destination_of(body.destination)
        try:
            removed = users.unsuppress(client, keys, destination, user_id=body.user_id, anonymous_id=body.anonymous_id)
        except OperatorError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"unsuppressed": removed}

    @router.get("/suppressed")
    def suppressed(destination: str) -> dict[str, Any]:
        """The destination's active suppressions, oldest first."""
        found = users.suppressed(client, keys, destination_of(destination), time.time())
        return {"count": len(found), "suppressed": found}

    return router
