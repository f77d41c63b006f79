"""Real client libraries, unchanged, against a running ingest and the real Redis.

segment-analytics-python 2.4.x (Basic + body key), 2.3.x (body key only: installed at test time
into a cache directory and run first on PYTHONPATH), rudder-sdk-python (gzip, Basic only) and
@segment/analytics-node (npm, pinned, installed at test time into a cache directory; run by Node.js) each
send identify/track/page/screen/group/alias in a subprocess; the streams must then hold every
message exactly once, with the right envelope.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from ingest_process import ROOT, Ingest, queued

from worker.core.destinations import Destination
from worker.transform.records import transform

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CLIENT = r"""
import json, sys
library, host, write_key, tag = sys.argv[1:5]
errors = []
if library == "rudder":
    from rudderstack.analytics.client import Client
    from rudderstack.analytics.version import VERSION
    client = Client(write_key, host=host, on_error=lambda e, batch: errors.append(repr(e)), max_retries=2)
else:
    from segment.analytics.client import Client
    from segment.analytics.version import VERSION
    client = Client(write_key, host=host, on_error=lambda e, batch: errors.append(repr(e)), max_retries=2)
user, anon = f"{tag}-user", f"{tag}-anon"
client.identify(user, {"email": "a@example.com", "plan": "pro"}, message_id=f"{tag}-identify")
client.track(user, "Order Completed", {"revenue": 12.5}, message_id=f"{tag}-track")
client.track(anonymous_id=anon, event="Viewed", message_id=f"{tag}-track-anon")
client.page(user, "Docs", "Intro", {"url": "https://example.com"}, message_id=f"{tag}-page")
client.screen(user, "App", "Home", message_id=f"{tag}-screen")
client.group(user, "group-1", {"name": "Acme"}, message_id=f"{tag}-group")
client.alias(anon, user, message_id=f"{tag}-alias")
client.flush()
client.join()
print(json.dumps({"version": VERSION, "errors": errors}))
"""

EXPECTED = {
    "identify": "identify",
    "track": "track",
    "track-anon": "track",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
}


ANALYTICS_NODE = "3.1.0"
NODE_CLIENT = r"""
const [pkg, host, writeKey, tag] = process.argv.slice(-4);
const { Analytics } = require(pkg);
const { version } = require(pkg + "/package.json");
const analytics = new Analytics({ writeKey, host, flushInterval: 50, maxRetries: 2 });
const errors = [];
analytics.on("error", (err) => errors.push(String((err && (err.reason || err.message)) || err)));
const user = `${tag}-user`, anon = `${tag}-anon`;
analytics.identify({ userId: user, traits: { email: "a@example.com", plan: "pro" }, messageId: `${tag}-identify` });
analytics.track({ userId: user, event: "Order Completed", properties: { revenue: 12.5 }, messageId: `${tag}-track` });
analytics.track({ anonymousId: anon, event: "Viewed", messageId: `${tag}-track-anon` });
analytics.page({ userId: user, category: "Docs", name: "Intro", properties: { url: "https://example.com" },
                 messageId: `${tag}-page` });
analytics.screen({ userId: user, name: "Home", properties: { app: "App" }, messageId: `${tag}-screen` });
analytics.group({ userId: user, groupId: "group-1", traits: { name: "Acme" }, messageId: `${tag}-group` });
analytics.alias({ userId: user, previousId: anon, messageId: `${tag}-alias` });
analytics.closeAndFlush({ timeout: 20000 }).then(() => console.log(JSON.stringify({ version, errors })));
"""


def analytics_node() -> tuple[str, Path]:
    """Node.js and ``@segment/analytics-node`` (pinned) in ``.cache/``, installed by npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js/npm are not installed: cannot run @segment/analytics-node")
    target = ROOT / ".cache" / f"npm-analytics-node-{ANALYTICS_NODE}"
    package = target / "node_modules" / "@segment" / "analytics-node"
    if not (package / "package.json").is_file():
        command = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(target)]
        result = subprocess.run(
            [*command, f"@segment/analytics-node@{ANALYTICS_NODE}"], capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip
        if result.returncode != 0 or not (package / "package.json").is_file():
            pytest.skip(f"npm could not install @segment/analytics-node: {result.stderr[-300:]}")
    return node, package


def segment_23() -> Path:
    """segment-analytics-python 2.3.x in a cache directory (it cannot share the venv with 2.4)."""
    target = ROOT / ".cache" / "segment-analytics-python-2.3"
    if not (target / "segment" / "analytics").is_dir():
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        result = subprocess.run(
            [*command, "segment-analytics-python==2.3.*"], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"PyPI unreachable, cannot install segment-analytics-python 2.3.x: {result.stderr[-300:]}")
    return target


def send(library: str, ingest_server: Ingest, write_key: str, tag: str, path_first: Path | None = None) -> str:
    env = dict(os.environ)
    if path_first is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path_first), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, library, ingest_server.url, write_key, tag],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    return str(report["version"])


def check(store: redis.Redis, ingest_server: Ingest, write_key: str, tag: str, library: str) -> None:
    mine = [e for e in queued(store, ingest_server.prefix) if str(e.message["messageId"]).startswith(f"{tag}-")]
    by_id = {e.message["messageId"]: e for e in mine}
    assert len(mine) == len(by_id) == len(EXPECTED), sorted(by_id)  # each exactly once
    for suffix, kind in EXPECTED.items():
        envelope = by_id[f"{tag}-{suffix}"]
        message = envelope.message
        assert envelope.write_key == write_key
        assert message["type"] == kind
        assert message["receivedAt"].endswith("Z")
        assert message["timestamp"].endswith("Z")
        assert "originalTimestamp" in message  # the client's clock, kept; timestamp corrected
        assert message["context"]["library"]["name"] == library
        assert "writeKey" not in message
    assert by_id[f"{tag}-track"].message["event"] == "Order Completed"
    assert by_id[f"{tag}-track"].message["userId"] == f"{tag}-user"
    assert by_id[f"{tag}-track-anon"].message["anonymousId"] == f"{tag}-anon"
    assert by_id[f"{tag}-group"].message["groupId"] == "group-1"
    assert by_id[f"{tag}-alias"].message["previousId"] == f"{tag}-anon"
    identify = by_id[f"{tag}-identify"].message
    traits = identify.get("traits") or identify["context"]["traits"]  # Rudder sends them in context.traits
    assert traits == {"email": "a@example.com", "plan": "pro"}
    # What the worker uploads for it: the profile carries the traits, wherever the library put them.
    records = transform(identify, Destination(account_id="ACC"), time.time())
    assert isinstance(records, list)
    assert records[0]["profileData"] == {"plan": "pro", "Email": "a@example.com"}


def test_segment_analytics_python_24(ingest_server: Ingest, redis_client: redis.Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    assert send("segment", ingest_server, "wk_one", tag).startswith("2.4")
    check(redis_client, ingest_server, "wk_one", tag, "analytics-python")


def test_segment_analytics_python_23_body_key_only(ingest_server: Ingest, redis_client: redis.Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    assert send("segment", ingest_server, "wk_two", tag, path_first=segment_23()).startswith("2.3")
    check(redis_client, ingest_server, "wk_two", tag, "analytics-python")


def test_rudder_sdk_python_gzip_basic_only_identify_traits_in_context(
    ingest_server: Ingest, redis_client: redis.Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    send("rudder", ingest_server, "wk_one", tag)
    check(redis_client, ingest_server, "wk_one", tag, "analytics-python")


def test_segment_analytics_node(ingest_server: Ingest, redis_client: redis.Redis) -> None:
    """Segment's Node.js library: Basic auth only, batches to /v1/batch, its own timestamps and messageIds kept."""
    node, package = analytics_node()
    tag = uuid.uuid4().hex[:8]
    result = subprocess.run(
        [node, "-e", NODE_CLIENT, "--", str(package), ingest_server.url, "wk_one", tag],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"version": ANALYTICS_NODE, "errors": []}
    check(redis_client, ingest_server, "wk_one", tag, "@segment/analytics-node")
