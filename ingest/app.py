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

import redis.asyncio
import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
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
from worker.store.connections import aclose, close, connect_async
from worker.store.producer import Producer

log = structlog.get_logger("ctrelay.ingest")

_TITLES = {
    "identify": "Identify",
    "track": "Track",
    "page": "Page",
    "screen": "Screen",
    "group": "Group",
    "alias": "Alias",
}


async def _measure_backlog(ingest: Ingest, interval: float) -> None:
    """Keep the backlog figure fresh (for the cap and the gauge) without costing requests a round trip."""
    while True:
        try:
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
    # a WAIT for replicas holds the answer up to min_replicas_timeout_s: the socket must outwait it
    waits = settings.min_replicas_timeout_s if settings.min_replicas else 0.0
    client = connect_async(settings, timeout_s=settings.redis_timeout + waits)
    producer = Producer(
        Keys(settings.redis_prefix),
        settings.partitions,
        settings.dedup_window,
        replicas=settings.min_replicas,
        replicas_timeout_s=settings.min_replicas_timeout_s,
    )
    ingest = Ingest(settings, config.destinations, client, producer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_measure_backlog(ingest, settings.backlog_interval))
        log.info("ingest ready", destinations=len(config.destinations), partitions=settings.partitions)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await aclose(client)
            admin_redis = getattr(app.state, "admin_redis", None)  # the admin API's synchronous client
            if admin_redis is not None:
                close(admin_redis)

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
