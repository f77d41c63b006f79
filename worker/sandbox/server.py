"""The CleverTap sandbox: a real HTTP server speaking CleverTap's upload API, with faults.

Part of the product: ``ctrelay dev`` and every end-to-end test deliver to it. Routes:

- ``POST /1/upload``: ``{"d": [record, ...]}`` → 200 with CleverTap's per-record body
  (``status`` success/partial/fail, ``processed``, ``unprocessed`` with code, error and the record).
- ``POST /1/delete/profiles.json``: ``{"identity": [...]}`` and/or ``{"guid": [...]}`` (≤ 100 each).
- ``GET /1/profile.json?identity=ID`` (or ``?objectId=ID``): CleverTap's read-only profile lookup,
  200 ``{"status": "success", "record": {...}}`` for a user the sandbox has records of, else 200
  ``{"status": "fail", "error": "User not found"}``; with wrong credentials 401 like every call (what
  ``ctrelay check`` relies on).
- ``/_sandbox/*``: the sandbox's own API (:mod:`worker.sandbox.admin`).

A CleverTap call meets, in order: the outage fault; the credentials (401); the per-account cap on
concurrent requests (429 "Too many concurrent requests"); the timeout fault; injected HTTP errors;
the body's shape and limits (400); poison events (400); per-record checks
(:mod:`worker.sandbox.checks`) and injected record codes (:mod:`worker.sandbox.faults`). The answer
then waits until the latency has passed since the request came in (so the work is inside the
latency, as at CleverTap), and only then are its records stored (:mod:`worker.sandbox.store`). The
``/_sandbox/*`` routes live in :mod:`worker.sandbox.admin`. One process, one event loop: the
counters need no locks because nothing awaits between a check and its update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from worker.sandbox.admin import Admin
from worker.sandbox.checks import FUTURE_SKEW_S, Oversize, check_record, is_token
from worker.sandbox.faults import RECORD_ERRORS
from worker.sandbox.responses import fail, json_response
from worker.sandbox.state import Sandbox

MAX_RECORDS = 1000
MAX_TOKENS = 100
MAX_DELETE_IDS = 100
DROP_LOG_MESSAGE = "ASGI callable returned without completing response."


class _Dropped(Response):
    """Sends a status line, then nothing: the server closes the connection mid-response."""

    def __init__(self) -> None:
        super().__init__(status_code=503)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})


async def _hold(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``, or less if the client hangs up; True when it did."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), seconds)
    except TimeoutError:
        return False
    return True


Handled = tuple[Response, Callable[[], None] | None]
"""A CleverTap call's answer, and what to store once its latency has passed (None: nothing)."""


class Handlers:
    """The routes, bound to one :class:`Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def _answer(self, response: Response) -> Response:
        self.sandbox.stats.status[response.status_code] += 1
        return response

    async def _serve(self, request: Request, handle: Callable[[str, bytes], Handled]) -> Response:
        """The path every CleverTap call takes up to its own body handling."""
        sandbox = self.sandbox
        sandbox.stats.requests += 1
        state = sandbox.faults
        faults = state.faults
        retry = {"Retry-After": str(faults.retry_after_s)} if faults.retry_after_s is not None else None
        if faults.outage:
            if faults.outage_mode == "drop":
                sandbox.stats.dropped += 1
                with contextlib.suppress(ClientDisconnect):
                    await request.body()  # read first, so the close is a clean FIN rather than a reset
                return _Dropped()
            return self._answer(fail(503, "Service Unavailable", retry))
        account = request.headers.get("x-clevertap-account-id", "")
        if not sandbox.authorised(account, request.headers.get("x-clevertap-passcode", "")):
            return self._answer(fail(401, "Invalid Credentials"))
        if sandbox.stats.in_flight[account] >= faults.cap:
            sandbox.stats.refuse(account)
            return self._answer(fail(429, "Too many concurrent requests"))
        sandbox.stats.enter(account)
        started = time.monotonic()
        try:
            try:
                body = await request.body()
            except ClientDisconnect:  # the client went away mid-upload: nobody to answer
                sandbox.stats.abandoned += 1
                return Response(status_code=400)
            delay = state.delay()
            hold = state.timeout()
            if hold:
                sandbox.stats.timeouts += 1
                if await _hold(request.receive, hold) and not faults.timeout_accepts:
                    sandbox.stats.abandoned += 1
                    return self._answer(fail(504, "Gateway Timeout"))
            status = state.error_status()
            if status is not None:
                response, commit = (
                    fail(status, f"Injected HTTP {status}", retry if status in (429, 503) else None),
                    None,
                )
            else:
                response, commit = handle(account, body)
            # the latency covers the work: a 200 ms sandbox answers in 200 ms, not 200 ms + processing
            remaining = started + delay - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            if commit is not None:
                commit()
            return self._answer(response)
        finally:
            sandbox.stats.leave(account, time.monotonic() - started)

    async def upload(self, request: Request) -> Response:
        self.sandbox.stats.uploads += 1
        return await self._serve(request, self._upload)

    def _upload(self, account: str, body: bytes) -> Handled:
        sandbox, faults = self.sandbox, self.sandbox.faults.faults
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return fail(400, "Invalid JSON body"), None
        records = payload.get("d") if type(payload) is dict else None
        if type(records) is not list or not records:
            return fail(400, 'The body must be {"d": [record, ...]} with at least one record'), None
        tokens = sum(1 for record in records if is_token(record))
        if len(records) - tokens > MAX_RECORDS:
            return fail(400, f"At most {MAX_RECORDS} event and profile records per request"), None
        if tokens > MAX_TOKENS:
            return fail(400, f"At most {MAX_TOKENS} token records per request"), None
        poison = faults.poison_events
        if poison and any(type(r) is dict and r.get("evtName") in poison for r in records):
            return fail(400, "Bad Request: invalid record"), None
        max_ts = int(time.time()) + FUTURE_SKEW_S
        oversize = Oversize()
        event_codes = faults.event_codes
        inject = faults.record_555_rate or faults.record_error_rate
        accepted: list[dict[str, Any]] = []
        unprocessed: list[dict[str, Any]] = []
        for record in records:
            code = check_record(record, max_ts, oversize)
            if code is None and event_codes and record.get("type") == "event":
                code = event_codes.get(record["evtName"])
            if code is None and inject:
                code = sandbox.faults.record_code()
            if code is None:
                accepted.append(record)
            else:
                unprocessed.append({"status": "fail", "code": code, "error": RECORD_ERRORS[code], "record": record})

        def commit() -> None:
            stats = sandbox.stats
            if accepted:
                sandbox.store.add(account, accepted, body if not unprocessed else None)
            stats.records += len(accepted)
            stats.records_by_account[account] += len(accepted)
            stats.records_unprocessed += len(unprocessed)
            for entry in unprocessed:
                stats.codes[entry["code"]] += 1
            stats.oversize_keys += oversize.keys
            stats.oversize_values += oversize.values

        status = "success" if not unprocessed else ("partial" if accepted else "fail")
        return json_response(200, {"status": status, "processed": len(accepted), "unprocessed": unprocessed}), commit

    async def profile(self, request: Request) -> Response:
        self.sandbox.stats.lookups += 1
        query = request.query_params
        return await self._serve(request, lambda account, _body: self._profile(account, query))

    def _profile(self, account: str, query: Mapping[str, str]) -> Handled:
        ids = [(key, query[key]) for key in ("identity", "objectId") if query.get(key)]
        if len(ids) != 1:
            return fail(400, "Give exactly one of identity or objectId"), None
        found = self.sandbox.store.profile(account, *ids[0])
        if found is None:
            return json_response(200, {"status": "fail", "error": "User not found"}), None
        return json_response(200, {"status": "success", "record": found}), None

    async def delete_profiles(self, request: Request) -> Response:
        self.sandbox.stats.deletes += 1
        return await self._serve(request, self._delete)

    def _delete(self, account: str, body: bytes) -> Handled:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return fail(400, "Invalid JSON body"), None
        if type(payload) is not dict:
            return fail(400, 'The body must be {"identity": [...]} and/or {"guid": [...]}'), None
        ids: dict[str, list[str]] = {}
        for key in ("identity", "guid"):
            value = payload.get(key, [])
            values = [value] if type(value) is str else value
            if type(values) is not list or not all(type(v) is str and v for v in values):
                return fail(400, f"{key} must be a non-empty string or a list of them"), None
            if len(values) > MAX_DELETE_IDS:
                return fail(400, f"At most {MAX_DELETE_IDS} values of {key} per request"), None
            ids[key] = values
        if not ids["identity"] and not ids["guid"]:
            return fail(400, "Give identity and/or guid"), None
        processed = len(ids["identity"]) + len(ids["guid"])
        answer = json_response(200, {"status": "success", "processed": processed, "unprocessed": []})

        def commit() -> None:
            self.sandbox.store.delete(account, ids["identity"], ids["guid"])

        return answer, commit


def create_app(sandbox: Sandbox) -> Starlette:
    """The ASGI app serving ``sandbox``."""
    h, admin = Handlers(sandbox), Admin(sandbox)
    routes = [
        Route("/1/upload", h.upload, methods=["POST"]),
        Route("/1/delete/profiles.json", h.delete_profiles, methods=["POST"]),
        Route("/1/profile.json", h.profile, methods=["GET"]),
        Route("/_sandbox/records", admin.records, methods=["GET", "DELETE"]),
        Route("/_sandbox/stats", admin.stats, methods=["GET"]),
        Route("/_sandbox/deletions", admin.deletions, methods=["GET"]),
        Route("/_sandbox/faults", admin.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/accounts", admin.accounts, methods=["GET", "POST"]),
        Route("/_sandbox/health", admin.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox
    return app


class _QuietDrops(logging.Filter):
    """Hides uvicorn's complaint about the responses the ``drop`` outage cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DROP_LOG_MESSAGE


def serve(sandbox: Sandbox, host: str, port: int, log_level: str = "warning") -> None:
    """Run the sandbox on uvicorn (uvloop, httptools) until SIGINT/SIGTERM, then exit 0.

    uvicorn shuts down gracefully and then re-raises the signal it caught; the handlers installed
    here turn that into a clean exit instead of death by signal.
    """
    import signal

    import uvicorn

    def exit_cleanly(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_cleanly)

    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    config = uvicorn.Config(
        create_app(sandbox),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
        backlog=2048,
    )
    uvicorn.Server(config).run()
