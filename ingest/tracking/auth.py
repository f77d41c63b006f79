"""Who is sending: the write key (HTTP Basic, body, or webhook URL), its destination, webhook signatures.

Segment's clients give the write key as HTTP Basic (username = write key, password empty, with or
without the colon), or only in the body (``writeKey`` at the top of a batch or in an item:
analytics-python 2.3.x). Every key a request names must be the same one: a header and a body
key that disagree is a 401, as is an unknown key. Webhooks name it in the URL (``?writeKey=``) or
with Basic; a ``writeKey`` inside a forwarded webhook body names the *Segment* source and is ignored.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from worker.core.destinations import Destination, Destinations
from worker.core.errors import RequestError


def basic_write_key(authorization: str | None) -> str | None:
    """The write key in an ``Authorization: Basic`` header (``key:`` or ``key``), or None when absent."""
    if not authorization:
        return None
    return _cached(authorization) if len(authorization) <= 256 else _decoded(authorization)


def _decoded(authorization: str) -> str | None:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise RequestError(
            401, "invalid_authorization", "Authorization header is not valid Basic credentials"
        ) from None
    key = decoded.partition(":")[0]
    return key or None


_cached = functools.lru_cache(maxsize=256)(_decoded)
"""Clients send the same header on every request (a refusal raises, never cached; 256 headers of 256 bytes)."""


def body_write_keys(top: Any, items: Iterable[Any]) -> set[str]:
    """Every ``writeKey`` a body names: at the top level and in each item."""
    found: set[str] = set()
    for holder in (top, *items) if isinstance(top, dict) else items:
        if isinstance(holder, dict):
            key = holder.get("writeKey")
            if key is None or key == "":
                continue
            if not isinstance(key, str):
                raise RequestError(400, "invalid_body", "writeKey: must be a string")
            found.add(key)
    return found


def resolve(destinations: Destinations, given: set[str]) -> Destination:
    """The destination of the one write key a request names; 401 when none, several, or unknown."""
    if not given:
        raise RequestError(401, "missing_write_key", "no write key: use HTTP Basic auth or writeKey in the body")
    if len(given) > 1:
        raise RequestError(401, "conflicting_write_keys", "the request names more than one write key")
    (key,) = given
    destination = destinations.get(key)
    if destination is None:
        raise RequestError(401, "unknown_write_key", "unknown write key")
    return destination


def sign(secret: str, body: bytes) -> str:
    """The webhook signature: hex HMAC-SHA1 of the raw body with the shared secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()


def check_signature(destination: Destination, body: bytes, signature: str | None) -> None:
    """With a ``webhook_secret`` configured, ``X-Signature`` is required and must match (401 otherwise).

    Compared as bytes in constant time: any header that is not the right hex digest (other length, non-hex,
    non-ASCII) is a 401, never an error."""
    if destination.webhook_secret is None:
        return
    if not signature:
        raise RequestError(401, "missing_signature", "X-Signature header required for this write key")
    expected = sign(destination.webhook_secret.get_secret_value(), body).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "replace")  # bytes: compare_digest refuses non-ASCII str
    if not hmac.compare_digest(expected, given):
        raise RequestError(401, "invalid_signature", "X-Signature does not match the body")
