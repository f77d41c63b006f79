"""The Tracking API's own dispatch: its POST paths answered straight from ASGI, in front of FastAPI.

A single call through FastAPI and Starlette (routing over every route, the exception and exit-stack
middleware, dependency solving, a ``Request`` and a ``Response``) cost about two thirds of ingest's CPU for
it. :class:`Dispatch` sits inside the CORS middleware (so every answer carries the same CORS headers) and
in front of the rest of the application: a request whose path is one of the Tracking API's POST paths
(``/v1/track``, ``/v1/t``, ``/v1/batch``, ... and their trailing-slash forms) with one of its methods goes
to :meth:`ingest.tracking.routes.Ingest.handle`, the handler the FastAPI routes of the same paths call, and
its answer is sent as is; anything else (another method, the admin API, the settings document, health,
metrics, the OpenAPI document) goes to FastAPI, which still holds the tracking routes: they describe the
paths in the OpenAPI document, answer a 405 with its ``Allow``, name the route templates of CORS
preflights and refusals, and serve the paths when the application runs under a ``root_path``.

An unexpected error is logged (``unexpected error``, as FastAPI's error handler logs it) and propagates: the
CORS middleware around answers the 500.

:class:`Direct` is the same choice for ingest's HTTP protocol (:mod:`ingest.connections`), which answers the
common tracking request itself, without an ASGI scope's receive and send or a task: it names the target of a
request and the CORS headers its answer carries, or None for anything that goes through ASGI as above.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.cors import CORS
from ingest.tracking.prepare import Kind
from ingest.tracking.routes import Ingest

log = structlog.get_logger("ctrelay.ingest")


class Target(NamedTuple):
    """What one tracking path is: the kind of body, the call type it implies, its route template, its methods."""

    kind: Kind
    implied_type: str | None
    route: str
    methods: frozenset[str]


class Dispatch:
    """The ASGI middleware: tracking POSTs to ``ingest``, the rest to ``app``."""

    def __init__(self, app: ASGIApp, ingest: Ingest, targets: Iterable[tuple[str, Target]]) -> None:
        self.app = app
        self.ingest = ingest
        self.targets = dict(targets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            target = self.targets.get(scope["path"])
            if target is not None and scope["method"] in target.methods:
                try:
                    answer = await self.ingest.handle(scope, receive, target.kind, target.implied_type, target.route)
                    await answer.send(send)
                except Exception as exc:
                    log.error("unexpected error", error=type(exc).__name__, exc_info=exc)
                    raise
                return
        await self.app(scope, receive, send)


class Direct:
    """What the HTTP protocol answers itself: the targets of :class:`Dispatch` and the CORS headers of :class:`CORS`."""

    def __init__(self, ingest: Ingest, targets: Iterable[tuple[str, Target]], cors: CORS) -> None:
        self.ingest = ingest
        self.targets = dict(targets)
        self.cors = cors

    def route(self, scope: Scope) -> tuple[Target, list[tuple[bytes, bytes]]] | None:
        """The target of a request (its scope: ``method``, ``path``, ``headers``) and the CORS headers of its
        answer, when it is one the dispatch would serve and CORS let through; else None."""
        target = self.targets.get(scope["path"])
        if target is None or scope["method"] not in target.methods:
            return None
        allow = self.cors.allow(scope)
        return None if allow is None else (target, allow)
