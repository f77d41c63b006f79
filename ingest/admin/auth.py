"""The admin token check, the one dependency every admin route starts with, and the bodies it lets through.

``Authorization: Bearer <CTRELAY_ADMIN_TOKEN>``, compared in constant time (:func:`hmac.compare_digest`) whatever
was given; missing or wrong: 401.

Nothing is read before the check: FastAPI reads and parses a declared body parameter *before* a route's
dependencies run, so no admin route declares one. A route that takes a JSON body takes the ``Request`` and calls
:func:`json_body` (ingest's bounded reader, ``CTRELAY_MAX_ADMIN_BODY_BYTES``, then the pydantic model): too large
or not JSON is a 400 with ``code``/``message``, a body the model refuses is ``400 invalid_request``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from ingest import body

Model = TypeVar("Model", bound=BaseModel)

_bearer = HTTPBearer(auto_error=False, description="the admin token, CTRELAY_ADMIN_TOKEN")


def token_check(token: str) -> Callable[..., None]:
    """The dependency that lets a request through only with ``token``."""
    expected = token.encode("utf-8")

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "admin token required: Authorization: Bearer <CTRELAY_ADMIN_TOKEN>")

    return authorize


async def json_body(request: Request, model: type[Model], limit: int, depth: int) -> Model:
    """The request's JSON body as ``model``: read through ingest's bounded reader (at most ``limit`` bytes,
    ``depth`` levels), then validated; raises :class:`worker.core.errors.RequestError` or
    :class:`RequestValidationError` (both answered 400 by the admin API)."""
    headers = request.headers
    document = await body.read_json(
        request.stream(), headers.get("content-length"), headers.get("content-encoding"), limit, depth
    )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads its body with :func:`json_body` (``openapi_extra``)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
