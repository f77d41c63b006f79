"""The settings document (``GET /v1/projects/{writeKey}/settings``) that analytics.js and the mobile SDKs load at
start-up, and its answer: 200 and the document for a configured write key (cacheable for a minute: publicly only when
``CTRELAY_PUBLIC_URL`` names the relay; derived from the client's ``Host`` it is ``private``, so that no shared cache
hands one client's Host to others), ``404 unknown_write_key`` for another."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from ingest import metrics
from ingest.responses import error_response
from worker.core.destinations import Destination
from worker.core.errors import RequestError

log = structlog.get_logger("ctrelay.ingest")


def settings_document(write_key: str, base_url: str) -> dict[str, Any]:
    """What ``GET /v1/projects/{writeKey}/settings`` answers: the document analytics.js and the mobile SDKs load at
    start-up. It sends them to this relay: the mobile SDKs replace their configured apiHost with
    ``Segment.io.apiHost``, so it names the relay's public base URL (``CTRELAY_PUBLIC_URL``, else the request's own
    scheme and ``Host``) plus ``/v1``, without the scheme, which is ``protocol``. Nothing else is turned on: no
    device-mode destinations, no middleware, no metrics sampling."""
    scheme, _, rest = base_url.partition("://")
    return {
        "integrations": {"Segment.io": {"apiKey": write_key, "apiHost": f"{rest.rstrip('/')}/v1", "protocol": scheme}},
        "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
    }


def answer(request: Request, route: str, destinations: Mapping[str, Destination], public_url: str | None) -> Response:
    """The answer to one settings request (counted and timed like every ingest route)."""
    started = time.perf_counter()
    write_key = str(request.path_params.get("write_key", ""))
    if write_key in destinations:
        base = public_url or f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        document = orjson.dumps(settings_document(write_key, base))
        # derived from the client's Host: a shared cache must not hand it to others (cache poisoning)
        cache = "public, max-age=60" if public_url else "private, max-age=60"
        response = Response(document, media_type="application/json", headers={"Cache-Control": cache})
    else:
        response = error_response(RequestError(404, "unknown_write_key", "no destination has this write key"), 0)
        log.debug("settings of an unknown write key", path=route)
    metrics.answered(route, response.status_code).inc()
    metrics.timed(route).observe(time.perf_counter() - started)
    return response
