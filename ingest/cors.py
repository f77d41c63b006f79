"""CORS for the Tracking API (every path under ``/v1/``), so that analytics.js can post from a web page.

analytics.js sends ``Authorization: Basic``, so the browser first sends an ``OPTIONS`` preflight and posts only
when that answer allows the page's origin, the method and the headers. Rules:

- an allowed ``Origin`` (``CTRELAY_CORS_ORIGINS``, comma-separated, default ``*`` = any) gets
  ``Access-Control-Allow-Origin: <that origin>`` (``Vary: Origin``) on **every** answer of a ``/v1/`` path,
  errors included (a 4xx, a 503, and the 500 of an unexpected error), and ``Retry-After`` is exposed to scripts;
  a request without ``Origin`` (servers, mobile SDKs) gets ``Access-Control-Allow-Origin: *`` when any origin
  is allowed, and no CORS header otherwise;
- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) on a served path answers ``204`` with
  ``Access-Control-Allow-Methods: POST, GET, OPTIONS`` (plus ``PUT, PATCH`` on the webhook path),
  ``Access-Control-Allow-Headers`` = ``authorization, content-type, content-encoding, x-retry-count,
  x-signature`` and any other header the browser asks for, and ``Access-Control-Max-Age: 7200`` (Chromium's
  cap); on a path that is not served it is the router's ``404``;
- a request whose ``Origin`` is not allowed, preflight or not, is refused: ``403 origin_not_allowed`` with
  **no** CORS header, nothing enqueued (without this a ``text/plain`` POST with the key in the body, which needs
  no preflight, would still be accepted from any web page). It is counted in
  ``ctrelay_ingest_requests_total{path,status="403"}`` and logged at debug with method and path.

Starlette's ``CORSMiddleware`` cannot say all of this: it answers preflights ``200``, a refused preflight ``400``
*with* the allow-methods/headers, lets a refused origin's POST through, and sits inside the error middleware, so
a 500 carries no CORS header. This small ASGI middleware is ingest's outermost layer (:mod:`ingest.app`): the 500
that FastAPI's error middleware sends passes through it, and for an error raised past that middleware (the Tracking
API's dispatch, :mod:`ingest.tracking.dispatch`) it answers the 500 itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import structlog
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest import metrics

log = structlog.get_logger("ctrelay.ingest")

PREFIX = "/v1/"
ALLOW_HEADERS = ("authorization", "content-type", "content-encoding", "x-retry-count", "x-signature")
MAX_AGE = "7200"
_REFUSED = orjson.dumps({"code": "origin_not_allowed", "message": "this origin may not send to this relay"})
CRASHED = orjson.dumps({"code": "internal_error", "message": "unexpected error"})


def parse_origins(text: str) -> frozenset[str] | None:
    """``CTRELAY_CORS_ORIGINS`` as a set of origins (trailing slashes and case ignored); ``None`` means any."""
    origins = {part.strip().rstrip("/").lower() for part in text.split(",") if part.strip()}
    if not origins or "*" in origins:
        return None
    return frozenset(origins)


def route_template(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The template of the route serving ``scope``'s path (whatever the method), or ``unmatched``."""
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return str(getattr(route, "path", "unmatched")).rstrip("/") or "/"  # "/v1/t/" is served as "/v1/t"
    return "unmatched"


class CORS:
    """The ASGI middleware; ``routes`` are the application's (to name refused requests by their template)."""

    def __init__(self, app: ASGIApp, origins: frozenset[str] | None, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.origins = origins
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        allow = self.allow(scope)
        if allow is None:
            await self._refuse(scope, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            template = route_template(self.routes, scope)
            if template != "unmatched":
                await self._preflight(scope, send, template, allow)
                return

        started = False

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *allow]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_cors)
        except Exception:
            if not started:  # the error middleware logs it and sees the answer started: it sends nothing more
                await _answer(send_with_cors, 500, CRASHED, [(b"content-type", b"application/json")])
            raise

    def allow(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers every answer to ``scope`` (a ``/v1/`` path) carries; None when its origin is refused."""
        origin = _header(scope, b"origin")
        if origin is None:
            return [] if self.origins is not None else [(b"access-control-allow-origin", b"*")]
        if self.origins is not None and origin.rstrip("/").lower() not in self.origins:
            return None
        return [
            (b"access-control-allow-origin", origin.encode("latin-1") if origin else b"*"),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", b"Retry-After"),
        ]

    async def _preflight(self, scope: Scope, send: Send, template: str, allow: list[tuple[bytes, bytes]]) -> None:
        methods = "POST, PUT, PATCH, GET, OPTIONS" if template.startswith("/v1/webhook") else "POST, GET, OPTIONS"
        asked = _header(scope, b"access-control-request-headers") or ""
        names = list(ALLOW_HEADERS)
        names += [name for name in (part.strip().lower() for part in asked.split(",")) if name and name not in names]
        headers = [
            *allow,
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-allow-headers", ", ".join(names).encode("latin-1")),
            (b"access-control-max-age", MAX_AGE.encode()),
        ]
        if not any(name == b"vary" for name, _ in headers):
            headers.append((b"vary", b"Origin"))
        metrics.answered(template, 204).inc()
        await _answer(send, 204, b"", headers)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        template = route_template(self.routes, scope)
        metrics.answered(template, 403).inc()
        log.debug("origin refused", method=scope["method"], path=scope["path"], origin=_header(scope, b"origin"))
        await _answer(send, 403, _REFUSED, [(b"content-type", b"application/json")])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
