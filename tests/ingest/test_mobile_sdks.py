"""Segment's mobile SDKs, byte for byte, against a relay serving HTTPS itself: settings, then a batch, delivered.

Each SDK's request is rebuilt from the SDK's own source (file and line cited; read at the commit named), with
the headers it sets, its framing of the body and its timestamp format, sent with ``http.client`` so that nothing
is added or normalised on the way. The relay runs as in production (``ctrelay ingest --ssl-certfile/--ssl-keyfile``
with a certificate generated here, sandbox CleverTap, a worker). Each test first GETs the settings document the
way the SDK does at start-up, then posts to ``https://<apiHost from that document>/b``, as the SDK would: the
answer must be ``200``, and the sandbox must receive exactly what the transform makes of the queued messages.

- analytics-kotlin 1.24.1 (segmentio/analytics-kotlin @ a14649b3)
- analytics-swift 1.9.4 (segmentio/analytics-swift @ c9a0d630)
- analytics_flutter 1.1.10 (segmentio/analytics_flutter @ 4d685c71)
- analytics-react-native 2.21.4 (segmentio/analytics-react-native @ 74884be7): `proxy`/`cdnProxy`,
  `useSegmentEndpoints: true`
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import ipaddress
import ssl
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from delivery_e2e import Relay, same_records, transformed_then_delivered

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

WK, ACC = "wk_mobile", "ACC-MOBILE"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (PEM files), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctrelay test")])
    now = dt.datetime.now(dt.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, private


@pytest.fixture
def tls_relay(relay: Relay, tmp_path: Path) -> tuple[Relay, str, ssl.SSLContext]:
    """Sandbox and ``ctrelay ingest`` over HTTPS (no worker yet); the base URL and a context trusting the cert."""
    cert, key = self_signed(tmp_path)
    relay.start_sandbox()
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret"}])
    _, url = relay.start_ingest("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    return relay, url, ssl.create_default_context(cafile=str(cert))


def exchange(
    context: ssl.SSLContext,
    url: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    *,
    body: bytes | list[bytes],
) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as given: these headers only (plus Host, and Content-Length for bytes), the body as
    bytes or as the chunks of a ``Transfer-Encoding: chunked`` body."""
    host, _, port = url.removeprefix("https://").partition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if isinstance(body, bytes):
            if method != "GET":
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
        else:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            for chunk in body:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def api_host(context: ssl.SSLContext, url: str, path: str, headers: list[tuple[str, str]]) -> str:
    """The SDK's start-up GET of its settings; the apiHost it then sends to (``host:port/v1``, https)."""
    status, answer_headers, body = exchange(context, url, "GET", path, headers, body=b"")
    assert status == 200, body
    assert answer_headers["cache-control"] in ("public, max-age=60", "private, max-age=60")
    segment = orjson.loads(body)["integrations"]["Segment.io"]
    assert segment["apiKey"] == WK
    assert segment["protocol"] == "https"
    assert segment["apiHost"] == url.removeprefix("https://") + "/v1"
    return str(segment["apiHost"])


def stamp(kind: str, offset_ms: int = 0) -> str:
    """Now (minus ``offset_ms``) in each SDK's timestamp format."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=offset_ms)
    if kind == "dart":  # DateTime.toUtc().toIso8601String(): microseconds
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"  # milliseconds


def context(library: str, version: str, os_name: str) -> dict[str, Any]:
    return {
        "app": {"name": "Shop", "version": "3.2.1", "build": "321", "namespace": "com.example.shop"},
        "device": {"id": uuid.uuid4().hex, "manufacturer": "Google", "model": "Pixel 8", "type": os_name.lower()},
        "library": {"name": library, "version": version},
        "os": {"name": os_name, "version": "14"},
        "screen": {"width": 1080, "height": 2400, "density": 2.75},
        "network": {"wifi": True, "cellular": False},
        "locale": "en-US",
        "timezone": "Europe/Berlin",
        "traits": {"anonymousId": "cached"},
    }


METADATA = {"bundled": [], "unbundled": [], "bundledIds": []}


def events(library: str, version: str, os_name: str, kind: str) -> list[dict[str, Any]]:
    """identify, an anonymous track, Order Completed, screen, alias: as the SDKs' event classes serialise them
    (``userId`` is ``""`` before identify in Kotlin: TrackEvent's default, Events.kt:174)."""
    anon, user = str(uuid.uuid4()), f"{library}-{uuid.uuid4().hex[:6]}"
    base = {"anonymousId": anon, "integrations": {}, "context": context(library, version, os_name)}
    base["_metadata"] = METADATA

    def message(offset: int, **fields: Any) -> dict[str, Any]:
        return {**fields, "messageId": str(uuid.uuid4()), **base, "timestamp": stamp(kind, offset)}

    return [
        message(900, type="track", event="App Opened", properties={"from_background": False}, userId=""),
        message(800, type="identify", userId=user, traits={"email": "ada@example.com", "plan": "pro", "age": 36}),
        message(
            700,
            type="track",
            userId=user,
            event="Order Completed",
            properties={
                "order_id": "o-1",
                "revenue": 25.5,
                "currency": "EUR",
                "products": [{"sku": "s-1", "price": 25.5}],
            },
        ),
        message(600, type="screen", userId=user, name="Checkout", properties={"step": 2}),
        message(500, type="alias", userId=user, previousId=anon),
    ]


def check(relay: Relay, client: redis.Redis, sent: list[dict[str, Any]]) -> None:
    envelopes, expected, delivered = transformed_then_delivered(client, relay, WK)
    assert sorted(e.message["messageId"] for e in envelopes) == sorted(m["messageId"] for m in sent)
    for envelope in envelopes:
        assert "writeKey" not in envelope.message
    assert len(expected) == len(sent)  # one record per message: none skipped or refused
    assert same_records(delivered, expected), (delivered, expected)


def test_analytics_kotlin_gzip_chunked_text_plain_no_authorization(
    tls_relay: tuple[Relay, str, ssl.SSLContext], redis_client: redis.Redis
) -> None:
    relay, url, context_ = tls_relay
    agent = ("User-Agent", "analytics-kotlin/1.24.1")  # HTTPClient.kt:190-193, Constants.kt:4
    # settings: GET https://$cdnHost/projects/$writeKey/settings with a JSON Content-Type (HTTPClient.kt:155-157)
    host = api_host(
        context_, url, f"/v1/projects/{WK}/settings", [agent, ("Content-Type", "application/json; charset=utf-8")]
    )
    sent = events("analytics-kotlin", "1.24.1", "Android", "java")
    # the batch file: {"batch":[ + events joined by "," + ],"sentAt":"…","writeKey":"…"} (StorageImpl.kt:37-40,
    # EventsFileManager.kt:83-88), timestamps as SimpleDateFormat "yyyy-MM-dd'T'HH:mm:ss'.'SSSzzz" (DateTimeUtils.kt:10)
    body = b'{"batch":[' + b",".join(orjson.dumps(m) for m in sent)
    body += b'],"sentAt":"' + stamp("java").encode() + b'","writeKey":"' + WK.encode() + b'"}'
    packed = gzip.compress(body)
    # POST https://$apiHost/b, text/plain, gzip, chunked streaming, no Authorization (HTTPClient.kt:166-172, 95-99)
    headers = [agent, ("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Accept-Encoding", "gzip")]
    assert f"https://{host}/b" == f"{url}/v1/b"
    status, _, answer = exchange(context_, url, "POST", "/v1/b", headers, body=[packed[:100], packed[100:]])
    assert (status, orjson.loads(answer)) == (200, {"success": True})
    check(relay, redis_client, sent)


def test_analytics_swift_json_batch_file(
    tls_relay: tuple[Relay, str, ssl.SSLContext], redis_client: redis.Redis
) -> None:
    relay, url, context_ = tls_relay
    # every request: JSON Content-Type, analytics-ios/<version>, Accept-Encoding gzip (HTTPClient.swift:283-288;
    # Version.swift: 1.9.4); settings at https://\(cdnHost)/projects/\(writeKey)/settings (HTTPClient.swift:201-207)
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("User-Agent", "analytics-ios/1.9.4"),
        ("Accept-Encoding", "gzip"),
    ]
    host = api_host(context_, url, f"/v1/projects/{WK}/settings", headers)
    sent = events("analytics-swift", "1.9.4", "iOS", "swift")
    # the batch file, line by line (LineStream.swift:105-107 adds "\n"): "{ \"batch\": [" (DirectoryStore.swift:159),
    # then each event, the later ones prefixed "," (DirectoryStore.swift:78-81), then
    # "],\"sentAt\":\"…\",\"writeKey\":\"…\"}" (DirectoryStore.swift:191-193); uploaded as is to /b, without
    # Authorization (HTTPClient.swift:125-132, segmentURL https://\(host)\(path) at :57-58)
    lines = [b'{ "batch": [', orjson.dumps(sent[0]), *(b"," + orjson.dumps(m) for m in sent[1:])]
    lines.append(b'],"sentAt":"' + stamp("swift").encode() + b'","writeKey":"' + WK.encode() + b'"}')
    body = b"".join(line + b"\n" for line in lines)
    assert f"https://{host}/b" == f"{url}/v1/b"
    status, _, answer = exchange(context_, url, "POST", "/v1/b", headers, body=body)
    assert (status, orjson.loads(answer)) == (200, {"success": True})
    check(relay, redis_client, sent)


def test_analytics_flutter_microsecond_timestamps(
    tls_relay: tuple[Relay, str, ssl.SSLContext], redis_client: redis.Redis
) -> None:
    relay, url, context_ = tls_relay
    # _configuredRequest: JSON Content-Type, analytics-flutter/<version>, Accept-Encoding gzip (http_client.dart:96-101;
    # version.dart: 1.1.10); URLs are "https://$host$path" (http_client.dart:18-20)
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("User-Agent", "analytics-flutter/1.1.10"),
        ("Accept-Encoding", "gzip"),
    ]
    api_host(context_, url, f"/v1/projects/{WK}/settings", headers)
    sent = events("analytics-flutter", "1.1.10", "Android", "dart")
    # jsonEncode({"batch", "sentAt": DateTime.now().toUtc().toIso8601String(), "writeKey"}) to /b
    # (http_client.dart:35-42)
    body = orjson.dumps({"batch": sent, "sentAt": stamp("dart"), "writeKey": WK})
    status, _, answer = exchange(context_, url, "POST", "/v1/b", headers, body=body)
    assert (status, orjson.loads(answer)) == (200, {"success": True})
    check(relay, redis_client, sent)


def test_analytics_react_native_proxy_with_segment_endpoints_and_a_retry(
    tls_relay: tuple[Relay, str, ssl.SSLContext], redis_client: redis.Redis
) -> None:
    relay, url, context_ = tls_relay
    # cdnProxy "https://<relay>/v1" + useSegmentEndpoints: <cdnProxy>/projects/<writeKey>/settings
    # (analytics.ts:364-380)
    api_host(context_, url, f"/v1/projects/{WK}/settings", [("Accept", "*/*")])
    sent = events("analytics-react-native", "2.21.4", "iOS", "js")
    # proxy "https://<relay>/v1" + useSegmentEndpoints: <proxy>/b (SegmentDestination.ts:400-417); fetch POST, JSON
    # Content-Type, X-Retry-Count only on a retry, body JSON.stringify({batch, sentAt: toISOString(), writeKey})
    # (api.ts:14-32)
    headers = [("Content-Type", "application/json; charset=utf-8"), ("X-Retry-Count", "1")]
    body = orjson.dumps({"batch": sent, "sentAt": stamp("js"), "writeKey": WK})
    status, _, answer = exchange(context_, url, "POST", "/v1/b", headers, body=body)
    assert (status, orjson.loads(answer)) == (200, {"success": True})
    check(relay, redis_client, sent)
