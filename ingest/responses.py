"""The answers every Segment client understands: exactly ``200 {"success": true}``, or ``{"code", "message"}``.

An :class:`Answer` is one answer as raw ASGI parts (status, body, headers in Starlette's order: given headers,
then ``content-length``, then ``content-type``), so that the Tracking API's own dispatch
(:mod:`ingest.tracking.dispatch`) sends exactly what a Starlette ``Response`` of the same answer would.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Send

from worker.core.errors import RequestError

SUCCESS = b'{"success":true}'
_JSON = (b"content-type", b"application/json")


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]

    async def send(self, send: Send) -> None:
        """Send it on an ASGI connection (start and body, as ``Response.__call__`` does)."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


ACCEPTED = Answer(200, SUCCESS, [(b"content-length", str(len(SUCCESS)).encode()), _JSON])
DISCONNECTED = Answer(400, b"", [(b"content-length", b"0")])
"""What a request whose client went away before its body was read gets (nobody reads it)."""


def error_answer(exc: RequestError, retry_after: int) -> Answer:
    """The JSON error body every client understands (``code`` and ``message``), with Retry-After on a 503."""
    body = orjson.dumps({"code": exc.code, "message": exc.message})
    headers = [(b"content-length", str(len(body)).encode()), _JSON]
    if exc.status == 503:
        headers.insert(0, (b"retry-after", str(retry_after).encode()))
    return Answer(exc.status, body, headers)


class AnswerResponse(Response):
    """An :class:`Answer` as a Starlette response (for the routes FastAPI serves)."""

    def __init__(self, answer: Answer, background: BackgroundTask | None = None) -> None:
        self.status_code, self.body, self.background = answer.status, answer.body, background
        self.raw_headers = list(answer.headers)


def error_response(exc: RequestError, retry_after: int) -> Response:
    """The same answer as :func:`error_answer`, as a Starlette response (the routes FastAPI serves)."""
    headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
    return Response(
        orjson.dumps({"code": exc.code, "message": exc.message}),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )
