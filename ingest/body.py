"""Request bodies: reading with a size cap, bounded gzip/deflate decompression, and JSON parsing.

Every limit applies to the decompressed bytes, and decompression stops as soon as the limit is
passed (a gzip bomb costs at most ``limit`` bytes of memory). JSON is parsed whatever the
Content-Type says (browsers send ``text/plain``).

Nesting is bounded too (``CTRELAY_MAX_DEPTH``, 64 by default): a value nested deeper than that
(objects and arrays, the message itself being level 1) is ``too_deep``, checked before anything
recurses into it: right after parsing for an admin body and a batch's ``context``, on each message
as it is encoded for a tracking call (:mod:`ingest.tracking.routes`), so that neither the batch
context merge nor re-encoding with orjson (whose own limit is 254 levels) can recurse past it. A
body orjson cannot parse at all (past its own 1,024 levels, invalid UTF-8, ...) is ``invalid_json``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from worker.core.errors import RequestError

WIRE_SLACK = 1024
"""Compressed input may be slightly larger than its output (incompressible data): allow it on the wire."""


def too_large(limit: int) -> RequestError:
    return RequestError(400, "body_too_large", f"request body larger than {limit} bytes (decompressed)")


async def read(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """Read the raw body, refusing more than ``limit`` bytes on the wire (plus a little slack)."""
    cap = limit + WIRE_SLACK
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise too_large(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def receive(messages: Receive, content_length: str | None, limit: int) -> bytes:
    """:func:`read` straight from the ASGI ``receive`` (what Starlette's ``Request.stream`` reads): the same cap,
    the same ``ClientDisconnect`` when the client goes away first, without an async generator per request."""
    cap = limit + WIRE_SLACK
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await messages()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > cap:
                    raise too_large(limit)
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate), never producing more than ``limit`` bytes."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        if len(raw) > limit:
            raise too_large(limit)
        return raw
    if name in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif name == "deflate":
        inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
    else:
        raise RequestError(400, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise RequestError(400, "invalid_encoding", f"body is not valid {name} data") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise too_large(limit)
    if not inflater.eof:
        raise RequestError(400, "invalid_encoding", f"{name} body is truncated")
    return body


def parse_json(body: bytes) -> Any:
    """Parse JSON; a client error (400 ``invalid_json``) when it is not."""
    if not body:
        raise RequestError(400, "invalid_json", "request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, "invalid_json", f"request body is not valid JSON: {exc.msg}") from None


async def read_json(
    chunks: AsyncIterator[bytes], content_length: str | None, encoding: str | None, limit: int, depth: int
) -> Any:
    """A whole JSON body through the same bounds as ingest's: at most ``limit`` bytes (decompressed), ``depth``
    levels. What the admin routes read, after their token check."""
    data = decompress(await read(chunks, content_length, limit), encoding, limit)
    document = parse_json(data)
    if not shallow(data, depth) and too_deep(document, depth):
        raise deep_error(depth, "body")
    return document


def shallow(body: bytes, limit: int) -> bool:
    """Whether no value of ``body`` can be nested deeper than ``limit``: it has at most ``limit`` brackets.

    A C-speed upper bound that spares :func:`too_deep`'s walk for almost every real request (a message's: one pass,
    the bytes without the brackets; a big body's: two counts, no copy)."""
    if len(body) <= _ONE_PASS:
        return len(body) - len(body.translate(None, b"{[")) <= limit
    return body.count(b"{") + body.count(b"[") <= limit


_ONE_PASS = 16 * 1024
"""Bodies up to this size are counted in one pass (a copy without the brackets: cheaper than two counts there)."""


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (``value`` itself is level 1).

    Iterative (no recursion, whatever the input) and stops at the first container past the limit."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, level = stack.pop()
        if level > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        below = level + 1
        stack.extend((child, below) for child in children if isinstance(child, dict | list))
    return False


def deep_error(limit: int, what: str = "message") -> RequestError:
    return RequestError(400, "too_deep", f"{what} nested more than {limit} levels deep")
