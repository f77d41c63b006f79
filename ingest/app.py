"""The ingest ASGI application: routes, health, metrics, OpenAPI, and the process's Redis client.

:func:`create_app` builds it from a :class:`worker.core.settings.Config`; :func:`factory` builds it from
the environment (what uvicorn calls in each worker process); :func:`serve` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hiredis
import redis.asyncio
import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ingest import metrics
from ingest.admin.mount import mount as mount_admin
from ingest.responses import error_response
from ingest.tracking import openapi
from ingest.tracking.routes import Ingest, Kind
from worker.core import logs
from worker.core.errors import ConfigError, RequestError
from worker.core.keys import Keys
from worker.core.messages import CALL_TYPES
from worker.core.settings import Config, load
from worker.store.producer import Producer
from worker.store.streams import claim_partitions_async

log = structlog.get_logger("ctrelay.ingest")

_TITLES = {
    "identify": "Identify",
    "track": "Track",
    "page": "Page",
    "screen": "Screen",
    "group": "Group",
    "alias": "Alias",
}


class _HiredisPacking(redis.asyncio.Connection):
    """redis.asyncio packs commands in Python (~1 ms for one EVALSHA of a 100-message batch); hiredis
    packs in C, as the synchronous client already does (same splitting of ``"SCRIPT LOAD"``-style names)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


def redis_client(url: str, timeout: float) -> redis.asyncio.Redis:
    """A client that fails fast: short connect/read timeouts and a single reconnect attempt."""
    pool = redis.asyncio.ConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        connection_class=_HiredisPacking if url.startswith("redis://") else redis.asyncio.Connection,
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


async def _check_partitions(ingest: Ingest) -> None:
    """Store or compare the partition count in Redis (:func:`~worker.store.streams.claim_partitions`)."""
    producer = ingest.producer
    await claim_partitions_async(ingest.client, producer.keys, producer.partitions)
    ingest.queue.partitions_checked = True


async def _measure_backlog(ingest: Ingest, interval: float) -> None:
    """Keep the backlog figure fresh (for the cap and the gauge) without costing requests a round trip; check the
    partition count once Redis answers, if it did not at start (a mismatch then makes every request 503)."""
    while True:
        try:
            if not ingest.queue.partitions_checked:
                try:
                    await asyncio.wait_for(_check_partitions(ingest), timeout=interval * 2 + 1)
                except ConfigError as exc:
                    ingest.queue.refused, ingest.queue.partitions_checked = str(exc), True
                    log.error("partitions_mismatch", error=str(exc))
            backlog = await asyncio.wait_for(ingest.producer.backlog(ingest.client), timeout=interval * 2 + 1)
            ingest.queue.backlog, ingest.queue.measured_at = backlog, time.monotonic()
            metrics.queue_length.set(backlog)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.debug("backlog not measured", error=type(exc).__name__)
        await asyncio.sleep(interval)


def _post(ingest: Ingest, kind: Kind, implied_type: str | None, route: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await ingest.handle(request, kind, implied_type, route)

    return endpoint


def create_app(config: Config) -> FastAPI:
    """The ingest application for one process (its Redis client opens lazily, closes on shutdown)."""
    settings = config.settings
    client = redis_client(settings.redis_url, settings.redis_timeout)
    producer = Producer(Keys(settings.redis_prefix), settings.partitions, settings.dedup_window)
    ingest = Ingest(settings, config.destinations, client, producer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # a count that differs from Redis's stops the start; Redis not answering yet does not
            await asyncio.wait_for(_check_partitions(ingest), timeout=settings.redis_timeout * 2 + 1)
        except ConfigError as exc:
            log.error("partitions_mismatch", error=str(exc))
            await client.aclose()
            raise
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("partitions not checked yet: Redis does not answer", error=type(exc).__name__)
        task = asyncio.create_task(_measure_backlog(ingest, settings.backlog_interval))
        log.info("ingest ready", destinations=len(config.destinations), partitions=settings.partitions)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
            admin_redis = getattr(app.state, "admin_redis", None)  # the admin API's synchronous client
            if admin_redis is not None:
                admin_redis.close()

    app = FastAPI(
        title="ctrelay ingest",
        version="1",
        description="Segment's HTTP Tracking API: every accepted message is durably queued before the 200.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.ingest = ingest
    answers: dict[int | str, dict[str, Any]] = dict(openapi.ANSWERS)

    def add(path: str, kind: Kind, implied: str | None, body: str | dict[str, Any], doc: str, **extra: Any) -> None:
        endpoint = _post(ingest, kind, implied, path)
        spec = openapi.operation(body, doc, extra.pop("parameters", None))
        name = path.strip("/").replace("/", "_")
        app.add_api_route(path, endpoint, methods=["POST"], responses=answers, openapi_extra=spec, name=name)
        app.add_api_route(path + "/", endpoint, methods=["POST"], include_in_schema=False, name=name + "_slash")

    for call in CALL_TYPES:
        add(f"/v1/{call}", "single", call, _TITLES[call] + "Call", f"One {call} call; `type` is implied by the path.")
    batch_doc = "Up to {n} messages, each with its `type`; invalid items are dropped and counted, the rest accepted."
    for path in ("/v1/batch", "/v1/import"):
        add(path, "batch", None, "Batch", batch_doc.format(n=settings.max_batch_messages))
    add(
        "/v1/webhook",
        "webhook",
        None,
        openapi.WEBHOOK_BODY,
        "What Segment's Webhooks destination sends: one message or an array. Write key by `?writeKey=` or Basic; "
        "`X-Signature` (hex HMAC-SHA1 of the body) is required when the destination has a `webhook_secret`.",
        parameters=openapi.WEBHOOK_PARAMETERS,
    )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: openapi.ANSWERS[503]})
    async def readyz() -> Response:
        """Redis answers and destinations are loaded."""
        try:
            await asyncio.wait_for(client.ping(), timeout=settings.redis_timeout * 2)
        except (redis.RedisError, OSError, TimeoutError):
            return error_response(RequestError(503, "queue_unavailable", "Redis does not answer"), settings.retry_after)
        if not config.destinations:
            return error_response(RequestError(503, "no_destinations", "no destinations loaded"), settings.retry_after)
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics_page() -> Response:
        """Prometheus metrics (summed over every worker process)."""
        return Response(metrics.render(settings.prometheus_multiproc_dir), media_type=metrics.CONTENT_TYPE)

    mount_admin(app, config)  # the admin API, only when CTRELAY_ADMIN_TOKEN is set

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(RequestError(exc.status_code, code, str(exc.detail)), settings.retry_after)

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> Response:
        log.error("unexpected error", error=type(exc).__name__, exc_info=exc)
        return error_response(RequestError(500, "internal_error", "unexpected error"), settings.retry_after)

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            generated = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = openapi.complete(generated)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
    return app


def factory() -> FastAPI:
    """Build the app from the environment: what uvicorn runs in each worker process.

    Every request allocates many short-lived dicts (parsed JSON): the start-up heap is frozen out of
    the garbage collector's scans and young collections run less often (~15% less CPU per message).
    """
    config = load()
    logs.configure(config.settings.log_level, config.settings.log_format)
    app = create_app(config)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app


def serve(host: str, port: int, workers: int) -> None:
    """Run ingest on uvicorn (uvloop, httptools), ``workers`` processes sharing the port.

    Settings and destinations are checked here first, so that a bad file stops the command at once.
    With several workers, metrics go to a shared directory (a temporary one unless
    ``PROMETHEUS_MULTIPROC_DIR`` is set), which the worker processes inherit.
    """
    import os
    import shutil
    import tempfile

    import uvicorn

    try:
        config = load()
    except ConfigError as exc:
        raise SystemExit(f"ctrelay ingest: {exc}") from None
    logs.configure(config.settings.log_level, config.settings.log_format)
    scratch = None
    if workers > 1 and config.settings.prometheus_multiproc_dir is None:
        scratch = tempfile.mkdtemp(prefix="ctrelay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = scratch
    log.info("ingest starting", host=host, port=port, workers=workers, destinations=len(config.destinations))
    try:
        uvicorn.run(
            "ingest.app:factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            proxy_headers=False,
            server_header=False,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
