"""How many records/s one ``ctrelay sandbox`` process accepts, so that it never is the bottleneck.

Run: ``.venv/bin/python tests/bench/bench_sandbox.py [--seconds 8] [--concurrency 15]``

Starts the sandbox as a real process on a free port and drives it over loopback with a bounded load:
``--concurrency`` clients (one account, so the 15-request cap applies as it does to the relay), each
posting the same pre-serialised 1000-record upload again and again for ``--seconds``. Scenarios, in
one run: 0 ms latency (the sandbox's own ceiling; the client shares the 2 cores, so this is a lower
bound), and 200 ms latency (it should reach the relay's ceiling ``cap × 1000 / latency`` = 75,000
records/s). Every figure is read back from the sandbox's own ``/_sandbox/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

HEADERS = {"X-CleverTap-Account-Id": "BENCH", "X-CleverTap-Passcode": "bench", "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def batch(size: int) -> bytes:
    """One upload of ``size`` typical track records (~270 bytes each, as the transform writes them)."""
    ts = int(time.time()) - 60
    records = [
        {
            "type": "event",
            "identity": f"user-{i % 5000}",
            "objectId": f"5f0c1e2a-8b1d-4b5e-9c3f-{i:012d}",
            "ts": ts,
            "evtName": "Product Viewed",
            "evtData": {"product_id": f"p-{i}", "price": 12.5, "currency": "USD", "category": "shoes", "rank": i},
        }
        for i in range(size)
    ]
    return orjson.dumps({"d": records})


def start(port: int, *flags: str) -> subprocess.Popen[bytes]:
    ctrelay = shutil.which("ctrelay", path=str(Path(sys.executable).parent))
    command = [ctrelay] if ctrelay else [sys.executable, "-m", "worker.cli"]
    process = subprocess.Popen([*command, "sandbox", "--port", str(port), *flags], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1).raise_for_status()
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the sandbox did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post_loop(port: int, request: bytes, deadline: float, statuses: dict[int, int]) -> None:
    """One keep-alive connection posting ``request`` until ``deadline``: a minimal HTTP/1.1 client, so that
    the load generator spends little CPU (httpx would take as much CPU as the sandbox)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def drive(port: int, pid: int, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    request = (f"POST /1/upload HTTP/1.1\r\nHost: sandbox\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode()
    request += body
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.delete("/_sandbox/records")
        statuses: dict[int, int] = {}
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(post_loop(port, request, deadline, statuses) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        stats: dict[str, Any] = (await client.get("/_sandbox/stats")).json()
        await client.delete("/_sandbox/records")
    return {"elapsed": elapsed, "cpu": cpu, "statuses": statuses, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=15)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    body = batch(args.records)
    print(
        f"cpu cores: {os.cpu_count()}; upload: {args.records} records, {len(body) / 1024:.0f} KiB; "
        f"{args.concurrency} concurrent clients, {args.seconds:.0f} s per scenario"
    )
    results: dict[str, float] = {}
    for name, latency in (("0 ms latency", 0), ("200 ms latency", 200)):
        port = free_port()
        process = start(port, "--latency-ms", str(latency), "--cap", str(args.concurrency))
        try:
            run = asyncio.run(drive(port, process.pid, body, args.concurrency, args.seconds))
        finally:
            stop(process)
        stats = run["stats"]
        rate = stats["records"] / run["elapsed"]
        results[name] = rate
        per_cpu = stats["records"] / run["cpu"] if run["cpu"] else float("nan")
        print(
            f"{name:>15}: {rate:>9,.0f} records/s accepted, {stats['uploads'] / run['elapsed']:>6,.1f} uploads/s, "
            f"sandbox CPU {run['cpu'] / run['elapsed']:.0%} of one core ({per_cpu:,.0f} records per CPU second), "
            f"round trip {run['elapsed'] * args.concurrency / max(stats['uploads'], 1) * 1000:.0f} ms "
            f"(in the sandbox {stats['mean_in_flight_ms']:.0f} ms), "
            f"max concurrency {stats['max_concurrency']}, statuses {run['statuses']}, "
            f"unprocessed {stats['records_unprocessed']}"
        )
    ceiling = args.concurrency * args.records / 0.2
    print(f"relay ceiling cap × {args.records} / 200 ms = {ceiling:,.0f} records/s")
    print(f"sandbox at 0 ms / relay ceiling: {results['0 ms latency'] / ceiling:.2f}x")
    print(f"sandbox at 200 ms / relay ceiling: {results['200 ms latency'] / ceiling:.2f}")


if __name__ == "__main__":
    main()
