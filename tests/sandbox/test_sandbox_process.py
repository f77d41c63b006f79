"""``ctrelay sandbox`` as a real process: upload over HTTP, read records and stats, real faults, clean stop."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ACCOUNT = {"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": "secret-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ctrelay() -> list[str]:
    found = shutil.which("ctrelay", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "worker.cli"]


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    port = free_port()
    command = [*ctrelay(), "sandbox", "--port", str(port), "--accounts", "ACC-1:secret-1", "--seed", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/_sandbox/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the sandbox did not answer within 15 s"
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=10)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=5)
            raise
        code = process.returncode
        assert code == 0, output
        assert "secret-1" not in output
        assert "Traceback" not in output


def test_upload_inspect_fault_and_stop(sandbox_url: str) -> None:
    with httpx.Client(base_url=sandbox_url, timeout=5) as client:
        records = [
            {"type": "event", "identity": "u1", "ts": 1_700_000_000, "evtName": "Clicked", "evtData": {"x": 1}},
            {"type": "profile", "identity": "u1", "ts": 1_700_000_000, "profileData": {"Gender": "other"}},
        ]
        answer = client.post("/1/upload", json={"d": records}, headers=ACCOUNT)
        assert answer.status_code == 200
        assert answer.json()["status"] == "partial"
        assert [e["code"] for e in answer.json()["unprocessed"]] == [514]
        wrong = {**ACCOUNT, "X-CleverTap-Passcode": "nope"}
        assert client.post("/1/upload", json={"d": records}, headers=wrong).status_code == 401

        shown = client.get("/_sandbox/records").json()["records"]
        assert shown == [{"account_id": "ACC-1", "record": records[0], "seq": 0}]
        stats = client.get("/_sandbox/stats").json()
        assert (stats["requests"], stats["records"], stats["records_unprocessed"]) == (2, 1, 1)
        assert stats["status_counts"] == {"200": 1, "401": 1}

        # an outage that drops connections: the client sees a network-level error
        client.post("/_sandbox/faults", json={"outage": True, "outage_mode": "drop"}).raise_for_status()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post("/1/upload", json={"d": records[:1]}, headers=ACCOUNT)
        client.delete("/_sandbox/faults").raise_for_status()

        # a held request outlasts the client's timeout; the sandbox notices the hang-up and frees the slot
        client.post("/_sandbox/faults", json={"timeout_rate": 1.0, "timeout_ms": 20_000}).raise_for_status()
        with pytest.raises(httpx.ReadTimeout):
            client.post("/1/upload", json={"d": records[:1]}, headers=ACCOUNT, timeout=0.3)
        deadline = time.monotonic() + 5
        while (stats := client.get("/_sandbox/stats").json())["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (stats["in_flight"], stats["timeouts"], stats["abandoned"], stats["dropped_connections"]) == (0, 1, 1, 1)
        assert stats["records"] == 1

        # with timeout_accepts, the records of a request whose client hung up are stored all the same
        client.post("/_sandbox/faults", json={"timeout_accepts": True}).raise_for_status()
        with pytest.raises(httpx.ReadTimeout):
            client.post("/1/upload", json={"d": records[:1]}, headers=ACCOUNT, timeout=0.3)
        deadline = time.monotonic() + 5
        while (stats := client.get("/_sandbox/stats").json())["records"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (stats["records"], stats["timeouts"], stats["abandoned"], stats["in_flight"]) == (2, 2, 1, 0)

        assert client.delete("/_sandbox/records").status_code == 200
        assert client.get("/_sandbox/records").json()["records"] == []
