"""Mounting the admin API on the ingest app: only when ``CTRELAY_ADMIN_TOKEN`` is set (otherwise every
``/admin/...`` path answers 404, like any unknown path)."""

from __future__ import annotations

import redis
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from ingest.admin import deadletters, users
from ingest.admin.auth import token_check
from ingest.responses import error_response
from worker.core.errors import RequestError
from worker.core.keys import Keys
from worker.core.settings import Config
from worker.ops.deadletters import replay_producer
from worker.store.connections import connect
from worker.store.deadletters import DeadLetterStore

log = structlog.get_logger("ctrelay.admin")


def _explain(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query"))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def mount(app: FastAPI, config: Config) -> bool:
    """Add the admin routes to ``app`` when an admin token is set; returns whether it did."""
    settings = config.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not token:
        return False
    keys = Keys(settings.redis_prefix)
    timeout = settings.redis_timeout  # ingest's: a frozen Redis is a 503 in about two timeouts, not a hang
    client = connect(settings, timeout_s=timeout, retry_once=True)
    app.state.admin_redis = client  # closed with the app (ingest's lifespan)

    async def unavailable(_: Request, exc: Exception) -> Response:
        """Redis does not answer an admin request: 503 with Retry-After (a server fault, not a crash)."""
        log.warning("admin request: redis unavailable", error=type(exc).__name__)
        error = RequestError(503, "queue_unavailable", "Redis does not answer; retry later")
        return error_response(error, settings.retry_after)

    async def invalid(_: Request, exc: Exception) -> Response:
        """A bad filter, query or body: 400 with ``code`` and ``message``, like ingest's own refusals."""
        message = _explain(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return error_response(RequestError(400, "invalid_request", message), settings.retry_after)

    async def refused(_: Request, exc: Exception) -> Response:
        """A body the bounded reader refuses (too large, not JSON, too deep): its own 400."""
        assert isinstance(exc, RequestError)
        return error_response(exc, settings.retry_after)

    app.add_exception_handler(redis.RedisError, unavailable)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(RequestError, refused)
    limits = {"body_limit": settings.max_admin_body_bytes, "depth": settings.max_depth}
    authorize = token_check(token)
    store = DeadLetterStore(client, keys, settings.deadletter_retention)
    producer = replay_producer(keys, settings.partitions)
    app.include_router(
        deadletters.build_router(
            store, producer, config.destinations, authorize, import_limit=settings.max_import_bytes, **limits
        )
    )
    window = settings.suppression_window_s
    app.include_router(
        users.build_router(client, keys, producer, config.destinations, authorize, window_s=window, **limits)
    )
    return True
