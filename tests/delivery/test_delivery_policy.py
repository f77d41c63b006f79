"""Unit tests: the retry/dead-letter policy, backoff, and the HTTP seam to CleverTap (httpx.MockTransport)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from worker.core.destinations import Destination
from worker.delivery.clevertap import CleverTap, Failure, Report, match_failures, parse_retry_after
from worker.delivery.policy import (
    DELIVERED,
    SPLIT,
    DeadLetter,
    Delivered,
    Retry,
    RetryPolicy,
    Verdict,
    all_delivered,
    backoff,
    classify,
    decide,
)
from worker.delivery.uploads import chunks
from worker.delivery.work import Work

DEST = Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://ct.test")
POLICY = RetryPolicy(window_s=100.0, backoff_min_s=1.0, backoff_max_s=300.0, auth_pause_s=30.0)


def event(n: int, name: str = "E") -> dict[str, Any]:
    return {"type": "event", "identity": f"u{n}", "ts": 1_700_000_000 + n, "evtName": name, "evtData": {"n": n}}


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> CleverTap:
    return CleverTap(httpx.Client(transport=httpx.MockTransport(handler)), timeout_s=1.0)


def direct(handler: Handler, timeout_s: float = 1.0) -> CleverTap:
    """The worker's way (:meth:`CleverTap.direct`): uploads through the transport itself, not the client."""
    return CleverTap(httpx.Client(), timeout_s=timeout_s, transport=httpx.MockTransport(handler))


@pytest.fixture(params=["client", "transport"])
def seam(request: pytest.FixtureRequest) -> Callable[[Handler], CleverTap]:
    """A seam over ``httpx.MockTransport``: through a client (tests, ``ctrelay check``) or the transport (workers)."""
    return client if request.param == "client" else direct


# -- the HTTP seam -----------------------------------------------------------------------------------------


def test_upload_sends_headers_and_body_and_reports_unprocessed_by_index(seam: Callable[[Handler], CleverTap]) -> None:
    records = [event(0), event(1), event(2)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = orjson.loads(request.content)
        failed = {"status": "fail", "code": 555, "error": "misc", "record": body["d"][1]}
        return httpx.Response(200, json={"status": "partial", "processed": 2, "unprocessed": [failed]})

    report = seam(handler).upload(DEST, records)
    request = seen[0]
    assert request.url == "http://ct.test/1/upload"
    assert request.headers["X-CleverTap-Account-Id"] == "ACC"
    assert request.headers["X-CleverTap-Passcode"] == "secret"
    assert request.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(request.content) == {"d": records}
    assert report.status == 200
    assert report.body_status == "partial"
    assert report.failures == {1: Failure(555, "misc")}
    assert report.unmatched == ()


@pytest.mark.parametrize(
    ("exc", "label"),
    [(httpx.ReadTimeout("slow"), "timeout"), (httpx.ConnectError("refused"), "network")],
)
def test_upload_reports_transport_errors_as_values(
    exc: Exception, label: str, seam: Callable[[Handler], CleverTap]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    report = seam(handler).upload(DEST, [event(0)])
    assert report.status is None
    assert report.label == label


def test_upload_reads_retry_after_and_non_json_bodies(seam: Callable[[Handler], CleverTap]) -> None:
    report = seam(lambda r: httpx.Response(429, text="Too many", headers={"Retry-After": "7"})).upload(DEST, [event(0)])
    assert (report.status, report.retry_after, report.error) == (429, 7.0, "Too many")


def test_match_failures_exact_then_loose_then_unmatched() -> None:
    records = [event(0), event(0), event(1)]
    changed = dict(event(1), evtData={"other": True})  # echoed differently: matched on type/identity/ts/evtName
    matched, unmatched = match_failures(
        records,
        [
            {"code": 512, "error": "a", "record": event(0)},
            {"code": 512, "error": "b", "record": event(0)},
            {"code": 555, "error": "c", "record": changed},
            {"code": 555, "error": "d", "record": event(9)},
        ],
    )
    assert matched == {0: Failure(512, "a"), 1: Failure(512, "b"), 2: Failure(555, "c")}
    assert unmatched == (Failure(555, "d"),)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3", 0.0) == 3.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4.0) == 6.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


# -- classification ----------------------------------------------------------------------------------------


def report(status: int | None, count: int = 3, **kwargs: Any) -> Report:
    return Report(count=count, status=status, **kwargs)


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(None, "timeout", "timeout"), (None, "network: x", "network"), (429, "", "throttled"), (500, "", "server_error")]
    + [(code, "", "server_error") for code in (502, 503, 504)],
)
def test_transient_http_failures_retry_the_whole_batch(status: int | None, error: str, reason: str) -> None:
    verdicts = classify(report(status, error=error, retry_after=2.0))
    assert isinstance(verdicts, list)
    assert [v.kind for v in verdicts] == ["transient"] * 3
    assert {v.reason for v in verdicts} == {reason}
    assert verdicts[0].retry_after == 2.0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(status: int) -> None:
    verdicts = classify(report(status))
    assert isinstance(verdicts, list)
    assert {v.kind for v in verdicts} == {"auth"}


def test_other_4xx_splits_a_batch_and_rejects_a_single_record() -> None:
    assert classify(report(400, count=2)) is SPLIT
    single = classify(report(400, count=1, error="bad payload"))
    assert isinstance(single, list)
    assert single == [Verdict("permanent", "rejected", 400, None, "bad payload")]


def test_200_per_record_codes() -> None:
    failures = {0: Failure(555, "misc"), 2: Failure(515, "bad email")}
    verdicts = classify(report(200, body_status="partial", failures=failures))
    assert isinstance(verdicts, list)
    assert [v.kind for v in verdicts] == ["transient", "delivered", "permanent"]
    assert verdicts[2].code == 515


def test_200_without_a_readable_body_or_with_unmatched_failures_is_not_delivered() -> None:
    unreadable = classify(report(200))
    assert isinstance(unreadable, list)
    assert {v.kind for v in unreadable} == {"transient"}
    unmatched = classify(report(200, body_status="partial", unmatched=(Failure(555, "?"),)))
    assert isinstance(unmatched, list)
    assert {v.kind for v in unmatched} == {"transient"}
    success = classify(report(200, body_status="success"))
    assert success == [DELIVERED] * 3


# -- backoff and decisions ---------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0), (100, 300.0)]:
        delays = [backoff(attempt, POLICY, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # it does reach up to the ceiling


def decide_now(verdicts: list[Verdict], attempts: int = 1, first: float | None = None, now: float = 1000.0) -> Any:
    return decide(verdicts, attempts=attempts, first_failure=first, now=now, policy=POLICY, rng=random.Random(3))


def test_decide_delivered_and_rejected() -> None:
    assert decide_now([DELIVERED, DELIVERED]) == Delivered()
    rejected = decide_now([DELIVERED, Verdict("permanent", "rejected", 200, 530, "bad token")])
    assert rejected == DeadLetter("rejected", 200, 530, "bad token")


def test_decide_retries_only_the_failing_records_and_honours_retry_after() -> None:
    outcome = decide_now([DELIVERED, Verdict("transient", "throttled", 429, retry_after=50.0)])
    assert isinstance(outcome, Retry)
    assert outcome.pending == (1,)
    assert outcome.due == 1050.0
    assert outcome.reason == "throttled"


def test_decide_never_schedules_past_the_window_and_then_dead_letters() -> None:
    transient = Verdict("transient", "server_error", 503)
    late = decide_now([transient], attempts=9, first=950.0, now=1040.0)
    assert isinstance(late, Retry)
    assert late.due <= 1050.0
    assert decide_now([transient], attempts=10, first=900.0, now=1000.0) == DeadLetter("retries_exhausted", 503)


def test_decide_auth_waits_the_pause_and_ends_as_auth_failed() -> None:
    auth = Verdict("auth", "auth", 401, error="invalid")
    outcome = decide_now([auth], attempts=1)
    assert isinstance(outcome, Retry)
    assert outcome.due == 1000.0 + POLICY.auth_pause_s
    assert decide_now([auth], attempts=5, first=800.0) == DeadLetter("auth_failed", 401, None, "invalid")


# -- request sizing ----------------------------------------------------------------------------------------


def test_chunks_hold_at_most_1000_records_and_100_tokens() -> None:
    work = Work("wk", {}, [event(i) for i in range(2500)] + [{"type": "token", "objectId": str(i)} for i in range(250)])
    sizes = [
        (sum(work.records[i]["type"] != "token" for _, i in c), sum(work.records[i]["type"] == "token" for _, i in c))
        for c in chunks([(work, i) for i in range(len(work.records))])
    ]
    assert all(records <= 1000 and tokens <= 100 for records, tokens in sizes)
    assert sum(r for r, _ in sizes) == 2500
    assert sum(t for _, t in sizes) == 250


def test_a_request_level_failure_in_a_200_body() -> None:
    auth = classify(report(200, body_status="fail", body_code=401, error="Invalid Credentials"))
    assert isinstance(auth, list)
    assert {(v.kind, v.status) for v in auth} == {("auth", 401)}
    throttled = classify(report(200, body_status="fail", body_code=429))
    assert isinstance(throttled, list)
    assert {v.reason for v in throttled} == {"throttled"}
    other = classify(report(200, body_status="fail", error="payload too large"))
    assert isinstance(other, list)
    assert {(v.kind, v.reason) for v in other} == {("transient", "bad_response")}


def test_the_seam_reads_a_body_code(seam: Callable[[Handler], CleverTap]) -> None:
    body = {"status": "fail", "error": "Invalid Credentials", "code": 401}
    result = seam(lambda r: httpx.Response(200, json=body)).upload(DEST, [event(0)])
    assert (result.status, result.body_status, result.body_code, result.error) == (
        200,
        "fail",
        401,
        "Invalid Credentials",
    )


def test_the_seam_bounds_each_phase_of_a_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "processed": 1, "unprocessed": []})

    seam = CleverTap(httpx.Client(transport=httpx.MockTransport(handler)), timeout_s=30.0)
    seam.upload(DEST, [event(0)])
    assert seen[0].extensions["timeout"] == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 5.0}
    assert seam.longest_request_s == 70.0


def test_the_transport_seam_bounds_each_phase_and_sends_what_the_client_sends() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "processed": 1, "unprocessed": []})

    via_client, via_transport = (
        CleverTap(httpx.Client(transport=httpx.MockTransport(handler)), 30.0),
        direct(handler, 30.0),
    )
    other = Destination(write_key="wk2", account_id="ACC2", passcode="other", endpoint="http://ct2.test")
    for seam in (via_client, via_transport):
        for destination in (DEST, other, DEST):  # (its headers and URL made once per destination: none mixed up)
            assert seam.upload(destination, [event(0)]).status == 200
        assert seam.delete(DEST, [{"type": "delete", "identity": ["u1"]}]).status == 200
    assert via_transport.client.headers  # the client's defaults (user agent, accept, encodings) go with each request
    assert seen[4].extensions["timeout"] == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 5.0}
    for sent, through in zip(seen[:4], seen[4:], strict=True):
        assert (through.method, through.url, through.content) == (sent.method, sent.url, sent.content)
        assert sorted(through.headers.multi_items()) == sorted(sent.headers.multi_items())
        assert through.extensions == sent.extensions
    assert [str(request.url) for request in seen[4:]] == [
        "http://ct.test/1/upload",
        "http://ct2.test/1/upload",
        "http://ct.test/1/upload",
        "http://ct.test/1/delete/profiles.json",
    ]
    assert [request.headers["X-CleverTap-Passcode"] for request in seen[4:7]] == ["secret", "other", "secret"]


def test_the_worker_seam_goes_through_its_transport_unless_a_proxy_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=4)
    seam = CleverTap.direct(limits, 30.0)
    assert isinstance(seam.transport, httpx.HTTPTransport)
    seam.close()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")  # the client honours it; a bare transport would not
    seam = CleverTap.direct(limits, 30.0)
    assert seam.transport is None
    seam.close()


def test_an_endpoint_with_a_user_and_password_sends_them_as_basic_auth_either_way() -> None:
    """``https://user:password@gateway/`` as an endpoint: the client sends it as Basic auth, so the transport seam
    sends such uploads through the client (a bare request would drop it)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "processed": 1, "unprocessed": []})

    gated = Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://user:pw@ct.test")
    mock = httpx.MockTransport(handler)
    for seam in (
        CleverTap(httpx.Client(transport=mock), 1.0),
        CleverTap(httpx.Client(transport=mock), 1.0, transport=mock),
    ):
        assert seam.upload(gated, [event(0)]).status == 200
        assert seam.upload(DEST, [event(1)]).status == 200
    assert [request.headers.get("Authorization") for request in seen] == ["Basic dXNlcjpwdw==", None] * 2
    assert {request.url.host for request in seen} == {"ct.test"}


def test_the_transport_seam_over_a_socket_reuses_its_connection_and_reports_a_refused_one() -> None:
    """A real HTTP server on a socket: answers read whole and the connection given back (one connection for
    several requests); a refused connection reported as a network error, not raised."""
    import http.server
    import threading

    peers: list[tuple[str, int]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            peers.append(self.client_address)
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = orjson.dumps({"status": "success", "processed": len(body["d"]), "unprocessed": []})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    destination = Destination(
        write_key="wk", account_id="A", passcode="p", endpoint=f"http://127.0.0.1:{server.server_port}"
    )
    seam = CleverTap.direct(httpx.Limits(max_connections=4, max_keepalive_connections=4), 5.0)
    try:
        for n in range(3):
            report = seam.upload(destination, [event(n), event(n + 1)])
            assert (report.status, report.body_status, report.failures) == (200, "success", {})
        assert len(peers) == 3
        assert len(set(peers)) == 1  # one kept-alive connection
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    seam.close()
    refused = CleverTap.direct(httpx.Limits(max_connections=4, max_keepalive_connections=4), 5.0)
    try:
        gone = refused.upload(destination, [event(0)])  # nothing listens on the port any more
        assert gone.status is None
        assert gone.error.startswith("network: ConnectError")
    finally:
        refused.close()


REPORTS = [
    Report(count=3, status=200, body_status="success"),
    Report(count=3, status=200, body_status="partial"),
    Report(count=3, status=206, body_status="success"),
    Report(count=3, status=200, body_status="fail"),
    Report(count=3, status=200, body_status="fail", body_code=401),
    Report(count=3, status=200, body_status=None),
    Report(count=3, status=200, body_status="partial", failures={1: Failure(555, "later")}),
    Report(count=3, status=200, body_status="partial", failures={0: Failure(512, "no")}),
    Report(count=3, status=200, body_status="success", unmatched=(Failure(512, "?"),)),
    Report(count=3, status=None, error="timeout"),
    Report(count=3, status=429),
    Report(count=3, status=500, body_status="success"),
    Report(count=3, status=400, body_status="fail"),
    Report(count=1, status=400),
    Report(count=3, status=401),
    Report(count=3, status=302, body_status="success"),
    Report(count=0, status=200, body_status="success"),
]


@pytest.mark.parametrize("report", REPORTS, ids=[f"{r.status}-{r.body_status}-{len(r.failures)}" for r in REPORTS])
def test_the_fast_path_takes_exactly_the_answers_classify_reads_as_all_delivered(report: Report) -> None:
    verdicts = classify(report)
    assert all_delivered(report) == (isinstance(verdicts, list) and all(v is DELIVERED for v in verdicts))
