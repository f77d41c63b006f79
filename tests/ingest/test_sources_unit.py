"""Browser and mobile sources, in process (no Redis needed): short paths, CORS, the settings document, refused
traffic counted by route template. What reaches Redis is tested over real processes (test_sources_http, the
mobile SDK and browser tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from ingest.app import create_app
from ingest.cors import parse_origins
from worker.core.settings import Settings, load

SHOP = "https://shop.example.com"
ASKED = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-retry-count",
}


def client(tmp_path: Path, **settings: Any) -> httpx.Client:
    """A synchronous client over the ASGI app (one event loop per request: the app keeps no loop state here)."""
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk_web"\naccount_id = "ACC"\npasscode = "p"\n')
    app = create_app(load(Settings(destinations=destinations, redis_url="redis://127.0.0.1:1/0", **settings)))

    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            async def go() -> httpx.Response:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay.test") as c:
                    answer = await c.send(request)
                    return httpx.Response(answer.status_code, headers=answer.headers, content=await answer.aread())

            return asyncio.run(go())

    return httpx.Client(transport=Transport(), base_url="http://relay.test")


def counted(path: str, status: int) -> float:
    value = REGISTRY.get_sample_value("ctrelay_ingest_requests_total", {"path": path, "status": str(status)})
    return value or 0.0


def cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_origins_setting() -> None:
    assert parse_origins("*") is None
    assert parse_origins("") is None
    assert parse_origins("https://a.example, https://B.example/ ,") == {"https://a.example", "https://b.example"}


@pytest.mark.parametrize("path", ["/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/v1/b", "/v1/t/", "/v1/batch"])
def test_preflight_from_any_origin_by_default(tmp_path: Path, path: str) -> None:
    with client(tmp_path) as http:
        before = counted(path.rstrip("/"), 204)
        answer = http.options(path, headers={"Origin": SHOP, **ASKED})
        assert answer.status_code == 204
        assert answer.content == b""
        headers = cors(answer)
        assert headers["access-control-allow-origin"] == SHOP
        assert headers["access-control-allow-methods"] == "POST, GET, OPTIONS"
        allowed = {name.strip() for name in headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-retry-count"} <= allowed
        assert int(headers["access-control-max-age"]) > 0
        assert "Origin" in answer.headers["vary"]
        assert counted(path.rstrip("/"), 204) == before + 1


def test_preflight_allows_headers_the_page_adds_and_webhook_methods(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        asked = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "X-Custom, Authorization"}
        answer = http.options("/v1/webhook", headers={"Origin": SHOP, **asked})
        assert answer.status_code == 204
        assert {"x-custom", "authorization"} <= set(answer.headers["access-control-allow-headers"].split(", "))
        assert "PUT" in answer.headers["access-control-allow-methods"]


def test_allowed_and_refused_origins(tmp_path: Path) -> None:
    with client(tmp_path, cors_origins=f"{SHOP}, https://app.example.com") as http:
        answer = http.options("/v1/t", headers={"Origin": SHOP, **ASKED})
        assert (answer.status_code, answer.headers["access-control-allow-origin"]) == (204, SHOP)

        before = counted("/v1/t", 403)
        refused = http.options("/v1/t", headers={"Origin": "https://evil.example", **ASKED})
        assert refused.status_code == 403
        assert cors(refused) == {}
        assert refused.json()["code"] == "origin_not_allowed"
        # a simple POST (text/plain, key in the body) needs no preflight: refused too, nothing read or enqueued
        posted = http.post("/v1/t", content=b'{"writeKey":"wk_web"}', headers={"Origin": "https://evil.example"})
        assert (posted.status_code, cors(posted)) == (403, {})
        assert counted("/v1/t", 403) == before + 2
        # servers and mobile SDKs send no Origin: served, no CORS header needed when origins are a list
        no_origin = http.post("/v1/t", content=b"{}")
        assert no_origin.status_code == 401
        assert cors(no_origin) == {}


def test_every_answer_of_an_ingest_path_carries_allow_origin(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        origin = {"Origin": SHOP}
        answers = [
            http.post("/v1/t", content=b"", headers=origin),  # 400 invalid_json
            http.post("/v1/t", content=b'{"userId":"u","event":"E"}', auth=("nobody", ""), headers=origin),  # 401
            http.get("/v1/t", headers=origin),  # 405
            http.get("/v1/nowhere", headers=origin),  # 404
            http.get("/v1/projects/wk_web/settings", headers=origin),  # 200
        ]
        assert [a.status_code for a in answers] == [400, 401, 405, 404, 200]
        for answer in answers:
            assert answer.headers["access-control-allow-origin"] == SHOP
            assert "Retry-After" in answer.headers["access-control-expose-headers"]
        assert http.post("/v1/t", content=b"").headers["access-control-allow-origin"] == "*"  # no Origin, any allowed
        assert "access-control-allow-origin" not in http.get("/healthz", headers=origin).headers  # not an ingest path


def test_an_unexpected_error_is_a_500_with_cors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.tracking.routes import Ingest

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Ingest, "project_settings", broken)
    with client(tmp_path) as http, pytest.raises(RuntimeError):
        http.get("/v1/projects/wk_web/settings", headers={"Origin": SHOP})
    # the app re-raises after answering (as Starlette does); the answer itself, seen at the ASGI level:
    destinations = tmp_path / "destinations.toml"
    app = create_app(load(Settings(destinations=destinations)))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/v1/projects/wk_web/settings", "raw_path": b"/v1/projects/wk_web/settings", "query_string": b"",
        "headers": [(b"host", b"relay.test"), (b"origin", SHOP.encode())], "server": ("relay.test", 80),
        "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    with pytest.raises(RuntimeError):
        asyncio.run(app(scope, receive, send))
    start = sent[0]
    assert start["status"] == 500
    assert (b"access-control-allow-origin", SHOP.encode()) in start["headers"]
    assert b"internal_error" in sent[1]["body"]


def test_unmatched_and_wrong_method_are_counted_by_template(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        unmatched, wrong = counted("unmatched", 404), counted("/v1/b", 405)
        assert http.post("/v1/events/123").status_code == 404
        assert http.get("/v1/b/").status_code == 405
        assert counted("unmatched", 404) == unmatched + 1
        assert counted("/v1/b", 405) == wrong + 1
        assert (
            REGISTRY.get_sample_value("ctrelay_ingest_requests_total", {"path": "/v1/events/123", "status": "404"})
            is None
        )


def test_short_paths_and_webhook_methods_are_served(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        for path in ("/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/v1/b"):
            body = b'{"batch": []}' if path == "/v1/b" else b"{}"
            assert http.post(path, content=body).json()["code"] == "missing_write_key", path
        for method in ("PUT", "PATCH", "POST"):
            assert http.request(method, "/v1/webhook", content=b"{}").json()["code"] == "missing_write_key", method
        assert http.request("PUT", "/v1/track", content=b"{}").status_code == 405


def test_settings_document(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        answer = http.get("/v1/projects/wk_web/settings", headers={"Host": "ingest.local:8000"})
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "private, max-age=60"  # apiHost from the client's Host
        assert answer.json() == {
            "integrations": {"Segment.io": {"apiKey": "wk_web", "apiHost": "ingest.local:8000/v1", "protocol": "http"}},
            "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
        }
        unknown = http.get("/v1/projects/wk_other/settings")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_write_key")
    with client(tmp_path, public_url="https://ingest.example.com/segment/") as http:
        segment = http.get("/v1/projects/wk_web/settings").json()["integrations"]["Segment.io"]
        assert segment == {"apiKey": "wk_web", "apiHost": "ingest.example.com/segment/v1", "protocol": "https"}


@pytest.mark.parametrize("url", ["ingest.example.com", "ftp://x", "https://x.example/?a=1"])
def test_public_url_must_be_a_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="CTRELAY_PUBLIC_URL"):
        Settings(public_url=url)


def test_refused_traffic_is_logged_at_debug_with_method_and_path(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    with client(tmp_path, cors_origins=SHOP) as http, capture_logs() as logs:
        http.get("/v1/nowhere")
        http.get("/v1/t")
        http.post("/v1/t", content=b"{}", headers={"Origin": "https://evil.example"})
    seen = [(entry["log_level"], entry.get("method"), entry.get("path")) for entry in logs]
    assert ("debug", "GET", "/v1/nowhere") in seen
    assert ("debug", "GET", "/v1/t") in seen
    assert ("debug", "POST", "/v1/t") in seen


def test_tls_flags_go_together_and_are_checked_before_start(tmp_path: Path) -> None:
    from ingest.serve import _tls

    assert _tls(None, None) is None
    with pytest.raises(SystemExit, match="go together"):
        _tls(tmp_path / "cert.pem", None)
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(SystemExit, match="cannot load the certificate"):
        _tls(tmp_path / "cert.pem", tmp_path / "cert.pem")
