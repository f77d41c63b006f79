"""The real analytics.js (``@segment/analytics-next`` from npm, pinned) in real headless Chromium, through the relay.

A page served by the test (its own origin, so every call is cross-origin: the browser sends CORS preflights for
the Basic header) loads the library's UMD build and makes identify, track (incl. ``Order Completed``), page,
screen, group and alias calls, in three modes: inline ``cdnSettings``, settings fetched from the relay
(``cdnURL`` only), and the batching strategy (``/v1/b``). The page records every body the library handed to
``fetch``; the streams must hold exactly those messages (by messageId), and the sandbox must then receive exactly
what the transform makes of them (``group`` is skipped by rule).

The library is installed by ``npm`` into ``.cache/`` (pinned); Chromium is Debian's ``chromium`` (``.ci/run``
installs it), driven by Playwright for Python (``executable_path``; no browser download). Where either is missing
the test is skipped with the reason. The versions that ran are printed and recorded as test properties.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from delivery_e2e import ROOT, Relay, same_records, transformed_then_delivered

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ANALYTICS_NEXT = "1.84.3"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WK, ACC = "wk_web", "ACC-WEB"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>shop</title>
<script>
  // every body analytics.js hands to fetch (it looks fetch up at each call), kept for the test
  window.__sent = [];
  const realFetch = window.fetch.bind(window);
  window.fetch = (url, init) => {
    if (init && init.body) window.__sent.push({url: String(url), body: String(init.body)});
    return realFetch(url, init);
  };
</script>
<script src="/ajs/index.js"></script>
</head><body><h1>shop</h1></body></html>
"""

CALLS = """async ([settings, options]) => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(settings, options);
  const done = [];
  done.push(analytics.identify("user-1", {email: "ada@example.com", plan: "pro", firstName: "Ada"}));
  done.push(analytics.track("Order Completed", {
    order_id: "o-1", revenue: 25.5, currency: "EUR", products: [{product_id: "p-1", sku: "s-1", price: 25.5}],
  }));
  done.push(analytics.track("Signed Up", {plan: "pro"}));
  done.push(analytics.page("Docs", "Intro", {section: "start"}));
  done.push(analytics.screen("Docs", "Settings"));
  done.push(analytics.group("group-1", {name: "Acme"}));
  done.push(analytics.alias("user-1", analytics.user().anonymousId()));
  const contexts = await Promise.all(done);
  return {
    version: analytics.VERSION,
    ids: contexts.map((ctx) => ctx.event.messageId),
    failed: contexts.filter((ctx) => ctx.failedDelivery()).map((ctx) => String(ctx.failedDelivery().reason)),
  };
}"""


def analytics_next() -> Path:
    """``@segment/analytics-next`` (pinned) in ``.cache/``, installed by npm on first use; its UMD build's folder."""
    target = ROOT / ".cache" / f"npm-analytics-next-{ANALYTICS_NEXT}"
    umd = target / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
    if not (umd / "index.js").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install @segment/analytics-next")
        command = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(target)]
        result = subprocess.run(
            [*command, f"@segment/analytics-next@{ANALYTICS_NEXT}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0 or not (umd / "index.js").is_file():
            pytest.skip(f"npm could not install @segment/analytics-next@{ANALYTICS_NEXT}: {result.stderr[-300:]}")
    return umd


@contextlib.contextmanager
def page_server(umd: Path) -> Iterator[str]:
    """The shop's origin: ``/`` is the page, ``/ajs/...`` the library's files (chunks load relative to the page)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                body = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path.startswith("/ajs/"):
                self.path = self.path.removeprefix("/ajs")
                super().do_GET()
                return
            self.send_error(404)

        def log_message(self, *_: Any) -> None:
            pass

    handler = functools.partial(Handler, directory=str(umd))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium() -> Any:
    """Playwright's Chromium launcher bound to Debian's chromium, or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python) is not installed")
    return sync_playwright


Mode = Callable[[str], tuple[dict[str, Any], dict[str, Any]]]
MODES: dict[str, Mode] = {
    # the settings inline: no request for them at all
    "inline-cdnSettings": lambda relay: (
        {
            "writeKey": WK,
            "cdnSettings": {
                "integrations": {
                    "Segment.io": {"apiKey": WK, "apiHost": relay.removeprefix("http://") + "/v1", "protocol": "http"}
                }
            },
        },
        {},
    ),
    # only the relay's URL: the settings document (GET /v1/projects/<wk>/settings) sends the calls to the relay
    "cdnURL": lambda relay: ({"writeKey": WK, "cdnURL": relay}, {}),
    # the batching strategy: /v1/b
    "batching": lambda relay: (
        {"writeKey": WK, "cdnURL": relay},
        {"integrations": {"Segment.io": {"deliveryStrategy": {"strategy": "batching", "config": {"size": 7}}}}},
    ),
}


def sent_messages(sent: list[dict[str, str]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The paths the browser posted to, and every message in those bodies."""
    paths, messages = [], []
    for request in sent:
        paths.append("/" + request["url"].split("/", 3)[3])
        body = orjson.loads(request["body"])
        messages += body.get("batch", [body])
    return paths, messages


@pytest.mark.parametrize("mode", list(MODES))
def test_analytics_next_in_chromium(
    relay: Relay, redis_client: redis.Redis, mode: str, record_property: Callable[[str, object], None]
) -> None:
    umd = analytics_next()
    launcher = chromium()
    relay.start_sandbox()
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret"}])
    ingest, relay_url = relay.start_ingest()
    settings, options = MODES[mode](relay_url)
    with page_server(umd) as shop, launcher() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(shop + "/")
            outcome = page.evaluate(CALLS, [settings, options])
            sent = page.evaluate("window.__sent")
            browser_version = browser.version
        finally:
            browser.close()
    ran = f"Chromium {browser_version}, @segment/analytics-next {outcome['version']} (npm {ANALYTICS_NEXT}), {mode}"
    print(ran)
    record_property("versions", ran)
    assert errors == [], ran
    assert outcome["failed"] == [], (ran, outcome, ingest.tail())
    assert outcome["version"] == ANALYTICS_NEXT

    paths, messages = sent_messages(sent)
    if mode == "batching":
        assert set(paths) == {"/v1/b"}, paths
    else:
        assert sorted(paths) == ["/v1/a", "/v1/g", "/v1/i", "/v1/p", "/v1/s", "/v1/t", "/v1/t"], paths
    assert sorted(m["messageId"] for m in messages) == sorted(outcome["ids"])

    answered = httpx.get(relay_url + "/metrics").text
    preflights = [
        line for line in answered.splitlines() if line.startswith("ctrelay_ingest_requests_total") and '"204"' in line
    ]
    assert preflights, answered  # cross-origin with a Basic header: the browser asked first, and was let through
    settings_fetched = (
        'ctrelay_ingest_requests_total{path="/v1/projects/{write_key}/settings",status="200"}' in answered
    )
    assert settings_fetched == (mode != "inline-cdnSettings")

    envelopes, expected, delivered = transformed_then_delivered(redis_client, relay, WK)
    queued = {e.message["messageId"]: e.message for e in envelopes}
    assert sorted(queued) == sorted(outcome["ids"])  # every call once, nothing else
    for sent_message in messages:  # what ingest queued is what the browser sent, plus its documented enrichment
        kept = queued[sent_message["messageId"]]
        for key, value in sent_message.items():
            if key not in ("writeKey", "timestamp", "sentAt"):
                assert kept[key] == value, (key, kept[key], value)
        assert kept["originalTimestamp"] == sent_message["timestamp"]
    assert len(expected) == 6  # identify, two tracks (one Charged), page, screen, alias; group is skipped
    assert {r.get("evtName") for r in expected} >= {"Charged", "Signed Up", "Web Page Viewed", "App Screen Viewed"}
    assert same_records(delivered, expected), (delivered, expected)
