"""Fuzzing a real ``ctrelay ingest`` (admin API on) as an attacker would: hypothesis generates 2,000 requests per run
over every path (tracking calls, batches, webhooks, admin routes, health, metrics), with nesting depths 1-2,000,
random and non-ASCII signatures, random write keys, tokens, encodings and admin bodies. No answer may be a 5xx,
none may take 5 s or more (the client's timeout), and the server keeps serving. The slowest answer is printed."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_process import Ingest, running_ingest

from ingest.tracking.auth import sign

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = 2000
TOKEN = "fuzz-admin-token"
CALLS = ["identify", "track", "page", "screen", "group", "alias"]
SHORT = ["/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/v1/b"]  # analytics.js and the mobile SDKs
POSTS = [f"/v1/{c}" for c in CALLS] + SHORT + ["/v1/batch", "/v1/import", "/v1/webhook", "/v1/track/", "/v1/nope"]
ADMIN = ["/admin/deadletters/replay", "/admin/deadletters/purge", "/admin/deadletters/import"]
ADMIN += ["/admin/users/delete", "/admin/users/unsuppress"]
GETS = ["/healthz", "/readyz", "/metrics", "/admin/deadletters", "/admin/deadletters/stats", "/admin/users/suppressed"]
GETS += ["/admin/deadletters/export", "/admin/deadletters/x", "/v1/batch", "/v1/projects/wk_one/settings"]


def deep(depth: int, array: bool) -> bytes:
    return (b"[" * depth + b"1" + b"]" * depth) if array else (b'{"a":' * depth + b"1" + b"}" * depth)


scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["userId", "anonymousId", "event", "type", "messageId", "context", "properties", "writeKey",
                        "timestamp", "sentAt", "integrations", "traits", "groupId", "previousId", "batch", "ids",
                        "all", "destination", "user_id", "rate", "dry_run", "reason"])  # fmt: skip
header_bytes = st.integers(0x20, 0xFF).filter(lambda c: c != 0x7F)
"""What a header value may hold on the wire (no control characters), Latin-1 and UTF-8 bytes included."""
messages = st.dictionaries(keys | st.text(max_size=6), values, max_size=8)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A body: a message, a batch, a list, random bytes, or a deep value placed where it hurts."""
    kind = draw(st.sampled_from(["message", "batch", "array", "bytes", "deep_message", "deep_batch", "deep_raw"]))
    if kind == "message":
        return orjson.dumps(draw(messages))
    if kind == "batch":
        top = draw(messages)
        top["batch"] = draw(st.lists(messages, max_size=5))
        return orjson.dumps(top)
    if kind == "array":
        return orjson.dumps(draw(st.lists(messages, max_size=5)))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    depth = draw(st.integers(min_value=1, max_value=2000))
    inner = deep(depth, draw(st.booleans()))
    if kind == "deep_raw":
        return inner
    if kind == "deep_message":
        field = draw(st.sampled_from([b"properties", b"context", b"traits", b"integrations", b"extra"]))
        return b'{"userId":"u1","event":"E","type":"track","' + field + b'":' + inner + b"}"
    where = draw(st.sampled_from(["context", "item", "both"]))
    item = b'{"type":"track","userId":"u1","event":"E","context":' + inner + b"}" if where != "context" else b"{}"
    context = inner if where != "item" else b"{}"
    return b'{"batch":[' + item + b',{"type":"identify","userId":"u2"}],"context":' + context + b"}"


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    path = draw(st.sampled_from(GETS if method == "GET" else POSTS + ADMIN))
    content = draw(bodies())
    headers: dict[str, Any] = {}
    auth = draw(st.sampled_from(["none", "basic", "basic_other", "bearer", "bearer_wrong", "garbage"]))
    if auth == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(b"wk_one:").decode()
    elif auth == "basic_other":
        headers["Authorization"] = "Basic " + base64.b64encode(draw(st.binary(min_size=1, max_size=20))).decode()
    elif auth == "bearer":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "bearer_wrong":
        headers["Authorization"] = "Bearer " + draw(
            st.text(st.characters(max_codepoint=126, min_codepoint=33), min_size=1)
        )
    elif auth == "garbage":
        headers["Authorization"] = b"x" + bytes(draw(st.lists(header_bytes, max_size=30))) + b"x"
    signature = draw(st.sampled_from(["none", "valid", "random", "non_ascii"]))
    if signature == "valid":
        headers["X-Signature"] = sign("hook-secret", content)
    elif signature == "random":
        headers["X-Signature"] = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=50))
    elif signature == "non_ascii":
        headers["X-Signature"] = draw(
            st.text(st.characters(min_codepoint=128, exclude_categories=("Cs",)), min_size=1, max_size=40)
        ).encode()
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from(["https://shop.example.com", "null", "http://evil.test"]))
    if draw(st.booleans()):
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip"]))
        if headers["Content-Encoding"] == "gzip" and draw(st.booleans()):
            content = gzip.compress(content)
    params = [
        ("writeKey", draw(st.sampled_from(["wk_one", "wk_hook", "wk_two", "nope", ""])))
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {"method": method, "path": path, "content": content, "headers": headers, "params": params}


@pytest.fixture(scope="module")
def hostile_ingest(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    prefix = f"test-fuzz-{time.time_ns()}"
    env = {"CTRELAY_ADMIN_TOKEN": TOKEN, "CTRELAY_LOG_LEVEL": "warning"}
    with running_ingest(redis_url, prefix, tmp_path_factory.mktemp("hostile"), env=env) as ingest:
        yield ingest


def test_no_5xx_and_no_slow_answer_for_hostile_requests(hostile_ingest: Ingest) -> None:
    statuses: dict[int, int] = {}
    slowest: tuple[float, str] = (0.0, "")
    with httpx.Client(base_url=hostile_ingest.url, timeout=5) as http:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(request=requests())
        def probe(request: dict[str, Any]) -> None:
            nonlocal slowest
            started = time.perf_counter()
            response = http.request(
                request["method"], request["path"], content=request["content"], headers=request["headers"],
                params=request["params"],
            )  # fmt: skip
            took = time.perf_counter() - started
            if took > slowest[0]:
                slowest = (took, f"{request['method']} {request['path']} ({len(request['content'])} bytes)")
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (request["path"], response.status_code, response.text[:300])

        probe()
        assert http.get("/healthz").status_code == 200
    print(f"{sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}; slowest {slowest[0]:.3f} s: "
          f"{slowest[1]}")  # fmt: skip
    assert sum(statuses.values()) >= EXAMPLES
    assert 200 in statuses
    assert 401 in statuses
    assert 400 in statuses
    log = Path(hostile_ingest.log).read_text()
    assert "Traceback" not in log
    assert "unexpected error" not in log
