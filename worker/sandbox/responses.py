"""The sandbox's JSON answers, CleverTap's error shape among them (``{"status": "fail", "error", "code"}``)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def fail(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"status": "fail", "error": error, "code": status}, headers)
