"""The admin token check, the one dependency every admin route starts with.

``Authorization: Bearer <CTRELAY_ADMIN_TOKEN>``, compared in constant time (:func:`hmac.compare_digest`) whatever
was given; missing or wrong: 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="the admin token, CTRELAY_ADMIN_TOKEN")


def token_check(token: str) -> Callable[..., None]:
    """The dependency that lets a request through only with ``token``."""
    expected = token.encode("utf-8")

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "admin token required: Authorization: Bearer <CTRELAY_ADMIN_TOKEN>")

    return authorize
