"""The answers every Segment client understands: exactly ``200 {"success": true}``, or ``{"code", "message"}``."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from worker.core.errors import RequestError

SUCCESS = b'{"success":true}'


def error_response(exc: RequestError, retry_after: int) -> Response:
    """The JSON error body every client understands (``code`` and ``message``), with Retry-After on a 503."""
    headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
    return Response(
        orjson.dumps({"code": exc.code, "message": exc.message}),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )
