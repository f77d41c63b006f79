"""The ingest ASGI application: routes, health, metrics, OpenAPI, and the process's Redis client.

:func:`create_app` builds it from a :class:`worker.core.settings.Config`; :mod:`ingest.serve` builds it from the
environment in each uvicorn worker process and runs the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest import metrics
from ingest.admin.mount import mount as mount_admin
from ingest.cors import CORS, parse_origins, route_template
from ingest.responses import AnswerResponse, error_response
from ingest.tracking import openapi
from ingest.tracking.dispatch import Direct, Dispatch, Target
from ingest.tracking.prepare import Kind
from ingest.tracking.routes import Ingest
from worker.core.errors import ConfigError, RequestError
from worker.core.keys import Keys
from worker.core.messages import CALL_TYPES
from worker.core.settings import Config
from worker.store.connections import aclose, close, connect_async
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


class _App(FastAPI):
    """FastAPI behind ingest's front: the CORS middleware, then the Tracking API's own dispatch
    (:mod:`ingest.tracking.dispatch`), then FastAPI's whole stack for everything else. CORS is outside FastAPI's
    error middleware: a 500 that middleware sends passes through CORS and carries its headers too."""

    front: ASGIApp | None = None
    direct: Direct | None = None
    """The tracking requests ingest's HTTP protocol answers itself (:class:`~ingest.connections.GuardedHttpTools`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)


def _post(ingest: Ingest, kind: Kind, implied_type: str | None, route: str) -> Callable[[Request], Awaitable[Response]]:
    """The FastAPI endpoint of a tracking path: the same handler as :class:`~ingest.tracking.dispatch.Dispatch`."""

    async def endpoint(request: Request) -> Response:
        return AnswerResponse(await ingest.handle(request.scope, request.receive, kind, implied_type, route))

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
        try:  # a count that differs from Redis's stops the start; Redis not answering yet does not
            await asyncio.wait_for(_check_partitions(ingest), timeout=settings.redis_timeout * 2 + 1)
        except ConfigError as exc:
            log.error("partitions_mismatch", error=str(exc))
            await aclose(client)
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
            await aclose(client)
            admin_redis = getattr(app.state, "admin_redis", None)  # the admin API's synchronous client
            if admin_redis is not None:
                close(admin_redis)

    app = _App(
        title="ctrelay ingest",
        version="1",
        description="Segment's HTTP Tracking API: every accepted message is durably queued before the 200.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.ingest = ingest
    answers: dict[int | str, dict[str, Any]] = dict(openapi.ANSWERS)
    targets: list[tuple[str, Target]] = []

    def add(path: str, kind: Kind, implied: str | None, body: str | dict[str, Any], doc: str, **extra: Any) -> None:
        endpoint = _post(ingest, kind, implied, path)
        spec = openapi.operation(body, doc, extra.pop("parameters", None))
        name = path.strip("/").replace("/", "_")
        methods = extra.pop("methods", ["POST"])
        target = Target(kind, implied, path, frozenset(methods))
        targets.extend(((path, target), (path + "/", target)))
        shown = extra.pop("include_in_schema", True)
        app.add_api_route(
            path, endpoint, methods=methods, responses=answers, openapi_extra=spec, name=name, include_in_schema=shown
        )
        app.add_api_route(path + "/", endpoint, methods=methods, include_in_schema=False, name=name + "_slash")

    for call in CALL_TYPES:
        add(f"/v1/{call}", "single", call, _TITLES[call] + "Call", f"One {call} call; `type` is implied by the path.")
        # analytics.js's short paths (/v1/i, /v1/t, ...): the same call, not repeated in the OpenAPI document
        add(f"/v1/{call[0]}", "single", call, _TITLES[call] + "Call", f"= /v1/{call}", include_in_schema=False)
    batch_doc = "Up to {n} messages, each with its `type`; invalid items are dropped and counted, the rest accepted."
    for path in ("/v1/batch", "/v1/import"):
        add(path, "batch", None, "Batch", batch_doc.format(n=settings.max_batch_messages))
    add(
        "/v1/b", "batch", None, "Batch", "= /v1/batch (analytics.js batching, the mobile SDKs)", include_in_schema=False
    )
    add(
        "/v1/webhook",
        "webhook",
        None,
        openapi.WEBHOOK_BODY,
        "What Segment's Webhooks destination sends: one message or an array. Write key by `?writeKey=` or Basic; "
        "`X-Signature` (hex HMAC-SHA1 of the body) is required when the destination has a `webhook_secret`. "
        "PUT and PATCH (Webhooks (Actions)) are served like POST.",
        parameters=openapi.WEBHOOK_PARAMETERS,
        methods=["POST", "PUT", "PATCH"],
    )

    settings_route = "/v1/projects/{write_key}/settings"

    @app.get(settings_route, tags=["sources"], responses=openapi.SETTINGS_ANSWERS, response_class=Response)
    async def project_settings(request: Request) -> Response:
        """The settings document analytics.js (`cdnURL`) and the mobile SDKs (`cdnHost`) load at start-up: it
        names this relay as their apiHost. 404 for a write key no destination has."""
        return ingest.project_settings(request, settings_route)

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
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        response = error_response(RequestError(exc.status_code, code, str(exc.detail)), settings.retry_after)
        if exc.headers:  # a 405's Allow
            response.headers.update(exc.headers)
        if exc.status_code in (404, 405):  # a misconfigured client seen from the server: counted by template
            template = route_template(app.routes, request.scope) if exc.status_code == 405 else "unmatched"
            metrics.answered(template, exc.status_code).inc()
            log.debug("request not served", method=request.method, path=request.url.path, status=exc.status_code)
        return response

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
    dispatch = Dispatch(super(_App, app).__call__, ingest, targets)
    cors = CORS(dispatch, origins=parse_origins(settings.cors_origins), routes=app.routes)
    app.front = cors
    app.direct = Direct(ingest, targets, cors)
    return app
